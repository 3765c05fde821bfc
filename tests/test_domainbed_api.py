"""DomainBed's Python API: users' scripts written against DomainBed run against ours.

Each test is written as a DomainBed user would write it (the names and call patterns of
DomainBed's own scripts, notebooks and tests) and checks the numbers against our own code
(collect_results' tables) or against values computed by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from domainbed import algorithms, command_launchers, datasets, hparams_registry, model_selection, networks
from domainbed.lib import misc, reporting
from domainbed.lib.query import Q, hashable, make_selector_fn
from domainbed.scripts import collect_results, sweep
from domainbed.scripts.collect_results import format_mean, print_table

import fixtures_records as fx

SELECTION_METHODS = {
    "training_domain": model_selection.IIDAccuracySelectionMethod,
    "leave_one_out": model_selection.LeaveOneOutSelectionMethod,
    "oracle": model_selection.OracleSelectionMethod,
}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    fx.write_sweep(root)
    return root


# ----------------------------------------------------------------------------- collect_results


def domainbed_style_tables(input_dir, selection_method) -> dict[str, dict[str, list]]:
    """What DomainBed's collect_results computes, written with DomainBed's API only:
    ``{dataset: {algorithm: [(mean, err) per test env]}}`` and the averages table."""
    records = reporting.load_records(input_dir)
    grouped = reporting.get_grouped_records(records).map(
        lambda group: {**group, "sweep_acc": selection_method.sweep_acc(group["records"])}
    ).filter(lambda g: g["sweep_acc"] is not None)
    out: dict[str, dict] = {}
    for dataset in records.select("args.dataset").unique().sorted():
        n_envs = max(records.filter_equals("args.dataset", dataset).select(lambda r: max(r["args"]["test_envs"]))) + 1
        for algorithm in records.filter_equals("args.dataset", dataset).select("args.algorithm").unique():
            cells = []
            for test_env in range(n_envs):
                trial_accs = grouped.filter_equals(
                    "dataset, algorithm, test_env", (dataset, algorithm, test_env)
                ).select("sweep_acc")
                mean, err, _ = format_mean(trial_accs, latex=False)
                cells.append(None if mean is None else (mean, err))
            trial_averages = (
                grouped.filter_equals("algorithm, dataset", (algorithm, dataset))
                .group("trial_seed")
                .map(lambda trial_seed, group: group.select("sweep_acc").mean())
            )
            avg_mean, avg_err, _ = format_mean(trial_averages, latex=False)
            out.setdefault(dataset, {})[algorithm] = (cells, (avg_mean, avg_err))
    return out


@pytest.mark.parametrize("rule", sorted(SELECTION_METHODS))
def test_a_domainbed_collect_results_script_gives_our_tables(sweep_dir, rule):
    ours = {t.key: t for t in collect_results.build_tables(sweep_dir, [rule])}
    theirs = domainbed_style_tables(sweep_dir, SELECTION_METHODS[rule])
    compared = 0
    for dataset, rows in theirs.items():
        key = f"{rule}/{dataset}"
        if key not in ours:  # ToyB has no pair runs: no leave-one-out table, and no DomainBed cell either
            assert all(c is None for cells, _ in rows.values() for c in cells)
            continue
        for algorithm, (cells, _) in rows.items():
            for cell, stat in zip(cells, ours[key].row(algorithm).cells):
                assert cell == pytest.approx((100 * stat.mean, 100 * stat.se), abs=1e-9)
                compared += 1
        averages = ours[f"{rule}/averages"]
        for algorithm, (_, avg) in rows.items():
            stat = averages.row(algorithm).cells[averages.columns.index(dataset)]
            assert avg == pytest.approx((100 * stat.mean, 100 * stat.se), abs=1e-9)
    assert compared >= 15


def test_load_records_skips_unfinished_jobs_unless_asked(sweep_dir):
    finished = reporting.load_records(sweep_dir)
    everything = reporting.load_records(sweep_dir, include_incomplete=True)
    assert isinstance(finished, Q) and len(everything) > len(finished) > 0
    assert all(isinstance(r, dict) and "args" in r and "step" in r for r in finished)
    with pytest.raises(ValueError, match="does not exist"):
        reporting.load_records(sweep_dir / "nope")


def _record(seed: int, step: int, test_envs: list[int], accs: dict[str, float], trial: int = 0) -> dict:
    args = {"dataset": "Toy", "algorithm": "ERM", "test_envs": test_envs, "hparams_seed": seed, "trial_seed": trial,
            "output_dir": f"/sweep/{seed}-{trial}-{'_'.join(map(str, test_envs))}"}
    return {"step": step, "args": args, **accs}


def _accs(in0: float, out0: float, out1: float, out2: float) -> dict[str, float]:
    return {"env0_in_acc": in0, "env0_out_acc": out0, "env1_in_acc": 0.5, "env1_out_acc": out1,
            "env2_in_acc": 0.5, "env2_out_acc": out2}


def test_selection_methods_class_api_by_hand():
    """Test env 0; hparams seed 0 peaks at step 1 (train-env out 0.8), seed 1 at step 0 (0.9)."""
    records = Q([
        _record(0, 0, [0], _accs(0.30, 0.31, 0.6, 0.6)),
        _record(0, 1, [0], _accs(0.40, 0.41, 0.8, 0.8)),
        _record(0, 2, [0], _accs(0.50, 0.51, 0.7, 0.7)),
        _record(1, 0, [0], _accs(0.60, 0.61, 0.9, 0.9)),
        _record(1, 1, [0], _accs(0.70, 0.71, 0.5, 0.5)),
    ])
    iid = model_selection.IIDAccuracySelectionMethod
    assert iid.run_acc(records.filter_equals("args.hparams_seed", 0)) == pytest.approx({"val_acc": 0.8, "test_acc": 0.4})
    accs = iid.hparams_accs(records)
    assert [run_acc for run_acc, _ in accs] == [pytest.approx({"val_acc": 0.9, "test_acc": 0.6}),
                                                pytest.approx({"val_acc": 0.8, "test_acc": 0.4})]
    assert [len(run_records) for _, run_records in accs] == [2, 3]
    assert iid.sweep_acc(records) == pytest.approx(0.6)
    # The oracle takes each run's last step and scores it by the test env's out accuracy.
    oracle = model_selection.OracleSelectionMethod
    assert oracle.run_acc(records.filter_equals("args.hparams_seed", 1)) == pytest.approx({"val_acc": 0.71, "test_acc": 0.7})
    assert oracle.sweep_acc(records) == pytest.approx(0.7)
    # No pair runs: leave-one-domain-out cannot score anything.
    assert model_selection.LeaveOneOutSelectionMethod.sweep_acc(records) is None
    assert iid.sweep_acc(Q([])) is None
    with_pair = Q([*records, _record(0, 0, [0, 1], _accs(0, 0, 0, 0))])
    assert model_selection.get_test_records(with_pair) == records
    assert iid.name == "training-domain validation set"
    assert issubclass(iid, model_selection.SelectionMethod)


def test_a_users_own_selection_method_overrides_run_acc_only():
    class LastStep(model_selection.SelectionMethod):
        name = "last step, scored by its step"

        @classmethod
        def run_acc(cls, run_records):
            last = run_records.sorted(key=lambda r: r["step"])[-1]
            return {"val_acc": -last["args"]["hparams_seed"], "test_acc": last["env0_in_acc"]}

    records = Q([_record(0, 0, [0], _accs(0.1, 0, 0, 0)), _record(1, 5, [0], _accs(0.9, 0, 0, 0))])
    assert LastStep.sweep_acc(records) == pytest.approx(0.1)


# ----------------------------------------------------------------------------- query language


def test_query_language():
    rows = Q([{"a": {"b": 2}, "k": "x", "v": 3.0}, {"a": {"b": 1}, "k": "y", "v": float("nan")},
              {"a": {"b": 2}, "k": "x", "v": 1.0}])
    assert rows.select("a.b") == [2, 1, 2] and rows.select("k, a.b")[0] == ("x", 2)
    assert rows.select("a.b").unique() == [2, 1] and rows.select("a.b").len() == 3 == len(rows)
    groups = rows.group("k")
    assert [key for key, _ in groups] == ["x", "y"] and [len(g) for _, g in groups] == [2, 1]
    assert rows.group_map("a.b", lambda key, group: (key, group.len())) == [(1, 1), (2, 2)]
    assert rows.filter_equals("k, a.b", ("x", 2)).select("v") == [3.0, 1.0]
    assert rows.filter_in("k", ["y"]).select("k") == ["y"]
    values = rows.select("v").filter_not_nan()
    assert (values.min(), values.max(), values.sum()) == (1.0, 3.0, 4.0)
    assert values.mean_std() == pytest.approx((2.0, 1.0))  # population std
    assert math.isnan(rows.select("v").sorted()[0])  # NaN sorts first
    assert values.sorted(key=lambda v: -v) == [3.0, 1.0]
    assert rows.argmax("a.b")["v"] == 3.0  # the first of equals
    assert Q([[1, 2], [3]]).flatten() == [1, 2, 3]
    assert Q([1, None, 2]).filter_not_none() == [1, 2] and Q([1, 2]).map(lambda x: x * 2) == [2, 4]
    assert Q([(1, 2)]).map(lambda a, b: a + b) == [3] and Q([1, 2, 3]).filter(lambda x: x > 1) == [2, 3]
    assert isinstance(Q([1, 2, 3])[1:], Q) and str(Q([1])) == "[1]"
    assert hashable([1, {"x": 2}]) == json.dumps({"_": [1, {"x": 2}]}, sort_keys=True) and hashable((1, 2)) == (1, 2)
    assert make_selector_fn("a.b")({"a": {"b": 7}}) == 7
    with pytest.raises(TypeError, match="selector"):
        make_selector_fn(3)


# ----------------------------------------------------------------------------- registries


def test_registries_and_hparams_as_domainbed_uses_them():
    assert "ERM" in algorithms.ALGORITHMS and isinstance(algorithms.ALGORITHMS, list)
    assert algorithms.get_algorithm_class("ERM").__name__ == "ERM"
    assert "Debug28" in datasets.DATASETS and datasets.num_environments("Debug28") == 3
    assert list(datasets.get_dataset_class("Debug28").ENVIRONMENTS) == ["0", "1", "2"]
    hparams = hparams_registry.default_hparams("ERM", "Debug28")
    assert hparams == hparams_registry.get_hparams("ERM", "Debug28", 0, 0)
    drawn = hparams_registry.random_hparams("ERM", "Debug28", misc.seed_hash(3, 1))
    assert drawn == hparams_registry.get_hparams("ERM", "Debug28", hparams_seed=3, trial_seed=1)
    assert drawn != hparams and set(drawn) == set(hparams)


def test_featurizer_and_classifier_by_domainbed_names():
    hparams = hparams_registry.default_hparams("ERM", "Debug28")
    hparams.pop("backbone", None)  # DomainBed chooses the network from the input shape
    featurizer = networks.Featurizer((3, 28, 28), hparams)
    classifier = networks.Classifier(featurizer.n_outputs, 3, hparams["nonlinear_classifier"])
    logits = classifier(featurizer(torch.randn(2, 3, 28, 28)))
    assert logits.shape == (2, 3) and featurizer.n_outputs == 128
    assert isinstance(networks.Classifier(8, 3, True), torch.nn.Sequential)


# ----------------------------------------------------------------------------- sweep


def test_job_and_make_args_list_as_domainbed_sweep_uses_them(tmp_path):
    args_list = sweep.make_args_list(
        n_trials=1, dataset_names=["Debug28"], algorithms=["ERM"], n_hparams_from=0, n_hparams=2, steps=5,
        data_dir="/data", task="domain_generalization", holdout_fraction=0.2, single_test_envs=False, hparams=None,
    )
    assert len(args_list) == (3 + 3) * 2  # singles and pairs of 3 envs, 2 hparams seeds
    assert args_list[0]["seed"] == misc.seed_hash("Debug28", "ERM", args_list[0]["test_envs"], 0, 0)
    jobs = [sweep.Job(train_args, str(tmp_path)) for train_args in args_list]
    for job, train_args in zip(jobs, args_list):
        digest = hashlib.md5(json.dumps(train_args, sort_keys=True).encode("utf-8")).hexdigest()
        assert str(job.output_dir) == str(tmp_path / digest) and job.train_args["output_dir"] == str(job.output_dir)
        assert job.state == sweep.Job.NOT_LAUNCHED == "Not launched"
    # The same folders as our own sweep command makes.
    ours = sweep.build_jobs(sweep.parse_args(["status", "--datasets", "Debug28", "--algorithms", "ERM", "--n_trials",
                                              "1", "--n_hparams", "2", "--steps", "5", "--data_dir", "/data",
                                              "--output_dir", str(tmp_path)]))
    assert sorted(str(j.output_dir) for j in ours) == sorted(str(j.output_dir) for j in jobs)

    launched: list[list[str]] = []
    sweep.Job.launch(jobs[:2], launched.append)  # a DomainBed launcher: a function of the commands
    assert len(launched[0]) == 2 and "domainbed.scripts.train" in launched[0][0] and "--output_dir" in jobs[0].command_str
    assert [j.state for j in jobs[:3]] == [sweep.Job.INCOMPLETE, sweep.Job.INCOMPLETE, sweep.Job.NOT_LAUNCHED]
    (jobs[0].output_dir / "done").write_text("")
    assert jobs[0].state == sweep.Job.DONE and str(jobs[0]).startswith("Done: ")
    sweep.Job.delete([jobs[1]])
    assert jobs[1].state == sweep.Job.NOT_LAUNCHED
    assert command_launchers.REGISTRY["dummy"] is command_launchers.dummy_launcher


def test_sweep_passes_the_domain_adaptation_flags_and_keeps_generalization_hashes(tmp_path):
    common = ["status", "--datasets", "Debug28", "--algorithms", "ERM", "--n_trials", "1", "--n_hparams", "1",
              "--output_dir", str(tmp_path), "--single_test_envs"]
    dg = sweep.build_jobs(sweep.parse_args(common))
    dg_args = sweep.make_args_list(1, ["Debug28"], ["ERM"], 0, 1, None, "./domainbed/data/", "domain_generalization",
                                   0.2, True, None)
    # DomainBed's job folder: md5 of the sorted JSON of exactly these train args.
    assert [j.output_dir.name for j in dg] == [
        hashlib.md5(json.dumps(a, sort_keys=True).encode()).hexdigest() for a in dg_args
    ]
    da = sweep.build_jobs(sweep.parse_args([*common, "--task", "domain_adaptation", "--uda_holdout_fraction", "0.2"]))
    assert all(j.train_args["task"] == "domain_adaptation" and j.train_args["uda_holdout_fraction"] == 0.2 for j in da)
    assert all("--uda_holdout_fraction" in j.argv and "domain_adaptation" in j.argv for j in da)
    assert "uda_holdout_fraction" not in dg[0].train_args
    with pytest.raises(SystemExit, match="needs --uda_holdout_fraction above 0"):
        sweep.main([*common, "--task", "domain_adaptation"])


# ----------------------------------------------------------------------------- misc


def test_make_weights_for_balanced_classes_by_hand():
    data = TensorDataset(torch.zeros(6, 1), torch.tensor([0, 0, 0, 1, 2, 2]))
    weights = misc.make_weights_for_balanced_classes(data)
    # 1 / (count of the class x 3 classes)
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 6, 1 / 6])
    # Class 1 absent: two classes present.
    gap = TensorDataset(torch.zeros(3, 1), torch.tensor([0, 0, 2]))
    assert misc.make_weights_for_balanced_classes(gap).tolist() == pytest.approx([1 / 4, 1 / 4, 1 / 2])
    # Through a split view, as DomainBed's train script calls it.
    first, rest = misc.split_dataset(data, 2, seed=0)
    assert misc.make_weights_for_balanced_classes(rest).sum().item() == pytest.approx(1.0)


def test_seed_hash_and_split_dataset_by_hand():
    assert misc.seed_hash(0, 1) == int(hashlib.md5(str((0, 1)).encode()).hexdigest(), 16) % 2**31
    data = TensorDataset(torch.arange(10).float(), torch.arange(10))
    keys = list(range(10))
    np.random.RandomState(5).shuffle(keys)
    first, rest = misc.split_dataset(data, 3, seed=5)
    assert isinstance(first, misc._SplitDataset) and first.underlying_dataset is data
    assert list(first.keys) == keys[:3] and list(rest.keys) == keys[3:]
    assert [int(first[i][1]) for i in range(3)] == keys[:3] and len(rest) == 7
    with pytest.raises(ValueError, match="cannot take 11"):
        misc.split_dataset(data, 11)


def test_minibatch_pairs_accuracy_and_dict_helpers(capsys, tmp_path):
    batches = [(torch.full((n, 1), float(d)), torch.full((n,), d)) for d, n in enumerate((4, 2, 3))]
    pairs = misc.random_pairs_of_minibatches(batches)
    firsts = [int(xi[0, 0]) for (xi, _), _ in pairs]
    assert sorted(firsts) == [0, 1, 2]
    for (xi, yi), (xj, yj) in pairs:
        assert len(xi) == len(xj) == min(len(batches[int(yi[0])][0]), len(batches[int(yj[0])][0]))
    assert [int(xj[0, 0]) for _, (xj, _) in pairs] == firsts[1:] + firsts[:1]  # cyclic

    class Net(torch.nn.Module):
        def predict(self, x):
            return torch.stack([x[:, 0], -x[:, 0]], dim=1)  # class 0 when x > 0

    loader = [(torch.tensor([[1.0], [-1.0], [2.0]]), torch.tensor([0, 0, 0]))]
    assert misc.accuracy(Net(), loader, None, "cpu") == pytest.approx(2 / 3)
    assert misc.accuracy(Net(), loader, torch.tensor([1.0, 2.0, 1.0]), "cpu") == pytest.approx(2 / 4)

    a = misc.ParamDict({"w": torch.tensor([1.0, 2.0])})
    b = misc.ParamDict({"w": torch.tensor([3.0, 5.0])})
    assert torch.equal((b - a)["w"], torch.tensor([2.0, 3.0])) and torch.equal((2 * a + 1)["w"], torch.tensor([3.0, 5.0]))
    assert torch.equal((a / 2)["w"], torch.tensor([0.5, 1.0])) and torch.equal((-a)["w"], torch.tensor([-1.0, -2.0]))
    assert misc.l2_between_dicts({"p": torch.ones(2), "q": torch.zeros(1)},
                                 {"p": torch.zeros(2), "q": torch.ones(1)}).item() == pytest.approx(1.0)
    ema = misc.MovingAverage(0.5)
    assert ema.update({"g": torch.tensor([2.0])})["g"].tolist() == [[2.0]]
    assert ema.update({"g": torch.tensor([4.0])})["g"].tolist() == [[5.0]]  # (0.5*1 + 0.5*4) / 0.5

    misc.print_row(["a", 0.5, 3], colwidth=6)
    misc.print_separator()
    assert capsys.readouterr().out == "a       0.5000  3      \n" + "=" * 80 + "\n"
    old = sys.stdout
    sys.stdout = misc.Tee(tmp_path / "out.txt", "w")
    try:
        print("hello")
    finally:
        sys.stdout.file.close()
        sys.stdout = old
    assert (tmp_path / "out.txt").read_text() == "hello\n" and "hello" in capsys.readouterr().out


def test_format_mean_and_print_table(capsys):
    assert format_mean([0.8, 0.9], latex=False) == (pytest.approx(85.0), pytest.approx(3.5355, abs=1e-4), "85.0 +/- 3.5")
    assert format_mean([0.5], latex=True)[2] == "50.0 $\\pm$ 0.0" and format_mean([], False) == (None, None, "X")
    table = [["85.0 +/- 3.5", "X", "85.0"]]
    print_table(table, "Dataset: Toy", ["ERM"], ["Algorithm", "A", "B", "Avg"], colwidth=14, latex=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "-------- Dataset: Toy" and lines[3].split() == ["ERM", "85.0", "+/-", "3.5", "X", "85.0"]
    assert table == [["85.0 +/- 3.5", "X", "85.0"]]  # not modified
    print_table(table, "Dataset: Toy", ["ERM"], ["Algorithm", "A", "B", "Avg"], colwidth=14, latex=True)
    text = capsys.readouterr().out
    assert "\\begin{tabular}{lccc}" in text and "\\textbf{A}" in text and "\\midrule" in text
