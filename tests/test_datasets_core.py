from __future__ import annotations

import numpy as np
import pytest
import torch

from domainbed.datasets import DatasetError, build_dataset, get_dataset_class
from domainbed.datasets.splits import in_out_split
from domainbed.lib.seeding import seed_hash


def test_split_is_seeded_by_trial_and_env():
    data = torch.utils.data.TensorDataset(torch.arange(50))
    in1, out1 = in_out_split(data, 2, 7, 0.2)
    in2, out2 = in_out_split(data, 2, 7, 0.2)
    assert in1.indices == in2.indices and out1.indices == out2.indices
    keys = np.arange(50)
    np.random.RandomState(seed_hash(7, 2)).shuffle(keys)
    assert out1.indices == keys[:10].tolist() and in1.indices == keys[10:].tolist()
    _, out3 = in_out_split(data, 2, 8, 0.2)
    assert out3.indices != out1.indices


def test_mnist_subset_sizes_and_shapes():
    d = build_dataset("RotatedMNISTSubset", None, [0], {"image_size": 32})
    assert [len(e) for e in d.datasets] == [834, 834, 833, 833, 833, 833]
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10
    assert d.environments == ["0", "15", "30", "45", "60", "75"]
    c = build_dataset("ColoredMNISTSubset", None, [0], {"image_size": 28})
    assert [len(e) for e in c.datasets] == [1667, 1667, 1666]
    assert c.input_shape == (3, 28, 28) and c.num_classes == 2
    labels = torch.cat([e.y for e in c.datasets])
    assert set(labels.tolist()) == {0, 1}


def test_rotation_actually_rotates():
    d = build_dataset("RotatedMNISTSubset", None, [0], {"image_size": 28})
    # env0 is unrotated: its digits are centred and upright, so rows carry more mass than after 75 degrees.
    a, b = d[0].x[:200].mean(0), d[5].x[:200].mean(0)
    assert not torch.allclose(a, b)


def test_missing_mnist_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="MNIST not found under .*MNIST/raw.*RotatedMNISTSubset"):
        build_dataset("RotatedMNIST", str(tmp_path), [0], {})


def test_unknown_dataset_lists_names():
    with pytest.raises(DatasetError, match="valid datasets: .*Debug28.*PACS"):
        get_dataset_class("PACSS")


def test_debug_datasets():
    d = build_dataset("Debug224", None, [0], {})
    assert d.input_shape == (3, 224, 224) and len(d) == 3


def test_labels_are_read_without_loading_inputs():
    from torch.utils.data import Subset

    from domainbed.training.loaders import class_balanced_weights, dataset_labels

    d = build_dataset("Debug28", None, [0], {})[1]
    view = Subset(d, [5, 2, 9])
    assert dataset_labels(view).tolist() == [int(view[i][1]) for i in range(3)]
    w = class_balanced_weights(view)
    counts = torch.bincount(dataset_labels(view))
    torch.testing.assert_close(w, 1.0 / counts[dataset_labels(view)].float())
