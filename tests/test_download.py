"""The download script is the only networked code; a dry run must touch nothing."""

from __future__ import annotations

import pytest

from domainbed.scripts import download


def test_dry_run_lists_steps_and_writes_nothing(tmp_path, capsys):
    download.main(["--data_dir", str(tmp_path), "--dataset", "DomainNet", "RotatedMNIST", "PACS", "--dry_run"])
    out = capsys.readouterr().out
    assert out.count("would fetch:") == 6 + 1 + 1
    assert str(tmp_path / "MNIST" / "raw") in out and "office" not in out
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown dataset 'PAC'"):
        download.main(["--data_dir", str(tmp_path), "--dataset", "PAC", "--dry_run"])
