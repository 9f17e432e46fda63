"""Datasets: named sets, folders, pairs, the bundled samples, and the training patch pipeline."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from catalog import dataset_sources, manifest_files, resolve_dataset, set_names
from data import ImagePair, PatchDataset, PatchSampler, load_pairs, rescaled_pairs
from images import dihedral, undo_dihedral
from imresize import degrade, imresize, modcrop
from utils import DatasetError


def _write_images(folder, names, size=(40, 50), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)


def test_named_set_resolves_under_data_root(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    folder = resolve_dataset("set5", 3, data_root=data_root, download=False)
    assert folder == data_root / "Set5" / "x3"
    monkeypatch.setenv("SR_DATA_ROOT", str(data_root))
    pairs = load_pairs("Set5", 3, download=False)
    assert [p.name for p in pairs][:2] == ["img_001_SRF_3_HR", "img_002_SRF_3_HR"]
    for pair in pairs:  # the given LR images are used, and they are HR / 3
        assert pair.lr.shape[-2] * 3 == pair.hr.shape[-2] and pair.lr.shape[-1] * 3 == pair.hr.shape[-1]
    t91 = resolve_dataset("T91", data_root=data_root, download=False)
    assert len(list(t91.glob("*.bmp"))) == 91


def test_bsd200_is_a_named_set_pinned_as_the_shared_manifest(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    manifest = json.loads((data_root / "MANIFEST.json").read_text())["sets"]["BSD200"]["files"]
    ours = manifest_files("BSD200", None)
    assert [(f.path, f.url, f.size, f.sha256) for f in ours] == [
        (f["path"], f["url"], f["bytes"], f["sha256"]) for f in manifest
    ]
    folder = resolve_dataset("bsd200", 4, data_root=data_root, download=False)
    assert folder == data_root / "BSD200"
    for remote in ours[:20]:  # a folder filled from the manifest's files is taken as it is
        assert hashlib.sha256((data_root / remote.path).read_bytes()).hexdigest() == remote.sha256


def test_291_and_comma_lists_join_sets(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    assert set_names("291") == ["T91", "BSD200"]
    joined = dataset_sources("291", 2, data_root=data_root, download=False)
    assert len(joined) == 291 and len({hr.stem for hr, _ in joined}) == 291
    assert joined == dataset_sources("T91,BSD200", 2, data_root=data_root, download=False)
    _write_images(tmp_path / "mine", ["a.png", "b.png"])
    mixed = dataset_sources(f"T91, {tmp_path / 'mine'}", 2, data_root=data_root, download=False)
    assert len(mixed) == 93 and mixed[-1][0] == tmp_path / "mine" / "b.png"
    with pytest.raises(DatasetError, match="empty name"):
        set_names("T91,,BSD200")
    with pytest.raises(DatasetError, match="not a known dataset"):
        dataset_sources("T91,nonesuch", 2, data_root=data_root, download=False)


def test_folder_of_hr_images_generates_lr(tmp_path):
    _write_images(tmp_path / "photos", ["a.png", "b.png"], size=(41, 52))
    pairs = load_pairs(str(tmp_path / "photos"), 3)
    assert [p.name for p in pairs] == ["a", "b"]
    assert pairs[0].hr.shape == (3, 39, 51)  # cropped to a multiple of the scale
    torch.testing.assert_close(pairs[0].lr, degrade(pairs[0].hr, 3))


def test_folder_of_pairs_uses_given_lr(tmp_path):
    folder = tmp_path / "pairs"
    _write_images(folder, ["x_HR.png"], size=(30, 30))
    _write_images(folder, ["x_LR.png"], size=(10, 10), seed=5)
    pairs = load_pairs(str(folder), 3)
    given = np.asarray(Image.open(folder / "x_LR.png"))
    np.testing.assert_array_equal(np.round(pairs[0].lr.permute(1, 2, 0).numpy() * 255), given)
    # another kernel is made from HR, not taken from the (bicubic) LR file
    other = load_pairs(str(folder), 3, degradations=("nearest",))
    torch.testing.assert_close(other[0].lr, degrade(other[0].hr, 3, "nearest"))
    with pytest.raises(DatasetError, match="divided by 2"):
        load_pairs(str(folder), 2)


def test_pair_without_lr_and_empty_folder_are_errors(tmp_path):
    _write_images(tmp_path / "lonely", ["y_HR.png"])
    with pytest.raises(DatasetError, match="no matching"):
        load_pairs(str(tmp_path / "lonely"), 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_pairs(str(tmp_path / "empty"), 2)
    with pytest.raises(DatasetError, match="not a known dataset"):
        load_pairs("Set6", 2)


def test_sample_photos_load_without_network():
    train, test = load_pairs("sample-train", 3), load_pairs("sample-test", 3)
    assert len(train) >= 5 and len(test) >= 2
    assert {p.name for p in train}.isdisjoint(p.name for p in test)
    assert any(p.hr.shape[0] == 1 for p in test)  # a grayscale photo, as in Set14
    assert len(load_pairs("sample", 3, channels=3)) == len(train) + len(test)


def _pairs(n=3, size=(36, 45), scale=3, kernels=("nearest",)):
    generator = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        hr = torch.rand(3, *size, generator=generator)
        out.append(ImagePair(f"img{i}", hr, tuple(degrade(hr, scale, k, bits=None) for k in kernels)))
    return out


def test_patches_are_aligned_and_augmented_consistently():
    dataset = PatchDataset(_pairs(), patch_size=12, patches_per_image=20, seed=1)
    assert len(dataset) == 60
    seen = set()
    for index in range(len(dataset)):
        lr, hr = dataset[index]
        assert lr.shape == (3, 4, 4) and hr.shape == (3, 12, 12)
        # nearest LR takes HR block centres; flips and rotations must keep that true
        torch.testing.assert_close(lr, hr[:, 1::3, 1::3])
        seen.add(hr.sum().item())
    assert len(seen) > 50  # crops and transforms vary


def test_dihedral_gives_eight_distinct_transforms():
    img = torch.arange(9.0).view(1, 3, 3)
    assert len({tuple(dihedral(img, k).flatten().tolist()) for k in range(8)}) == 8


def test_undo_dihedral_inverts_each_transform():
    img = torch.arange(24.0).view(2, 3, 4)  # not square: a wrong inverse changes the shape
    for k in range(8):
        assert torch.equal(undo_dihedral(dihedral(img, k), k), img), k
    assert not torch.equal(undo_dihedral(dihedral(img, 1), 3), img)


def test_grid_mode_is_the_fixed_srcnn_grid():
    pairs = _pairs(n=1, size=(60, 60))
    dataset = PatchDataset(pairs, patch_size=33, grid_stride=14, augment=False)
    assert len(dataset) == 2 * 2  # positions 0 and 14 on each axis (snapped to 0, 12)
    lr, hr = dataset[3]
    torch.testing.assert_close(hr, pairs[0].hr[:, 12:45, 12:45])
    torch.testing.assert_close(lr, pairs[0].lr[:, 4:15, 4:15])


def test_random_degradation_mix_uses_every_kernel():
    pairs = _pairs(n=1, kernels=("bicubic", "bilinear", "nearest"))
    dataset = PatchDataset(pairs, patch_size=12, patches_per_image=60, augment=False)
    nearest = sum(torch.equal(lr, hr[:, 1::3, 1::3]) for lr, hr in (dataset[i] for i in range(60)))
    assert 5 < nearest < 55


def _batches(dataset, workers, epoch, seed=0):
    sampler = PatchSampler(len(dataset), seed=seed)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=workers)
    return [torch.cat([lr.flatten(), hr.flatten()]) for lr, hr in loader]


def test_pipeline_is_deterministic_with_and_without_workers():
    dataset = PatchDataset(_pairs(), patch_size=12, patches_per_image=10, seed=7)
    plain = _batches(dataset, 0, epoch=2)
    torch.testing.assert_close(_batches(dataset, 0, epoch=2), plain, rtol=0, atol=0)
    torch.testing.assert_close(_batches(dataset, 2, epoch=2), plain, rtol=0, atol=0)
    assert not torch.equal(_batches(dataset, 0, epoch=3)[0], plain[0])  # epochs differ


def test_sampler_splits_an_epoch_across_ranks():
    keys = [list(PatchSampler(10, seed=3, rank=r, world=3)) for r in range(3)]
    assert all(len(k) == 4 for k in keys)
    indices = [index for rank in keys for _, index in rank]
    assert set(indices) == set(range(10))


def test_patch_size_must_fit_and_divide():
    with pytest.raises(DatasetError, match="multiple of scale"):
        PatchDataset(_pairs(), patch_size=10)
    with pytest.raises(DatasetError, match="smaller than"):
        PatchDataset(_pairs(size=(21, 21)), patch_size=33)
    with pytest.raises(DatasetError, match="different scales"):
        PatchDataset(_pairs(size=(36, 48), scale=2) + _pairs(size=(36, 48)), patch_size=12)


def test_images_smaller_than_the_patch_are_left_out_only_when_asked():
    pairs = _pairs(n=2, size=(36, 45)) + _pairs(n=1, size=(21, 21))
    with pytest.raises(DatasetError, match="smaller than the 24px patch: img0"):
        PatchDataset(pairs, patch_size=24)
    dataset = PatchDataset(pairs, patch_size=24, patches_per_image=5, skip_small=True)
    assert [p.hr.shape[-1] for p in dataset.pairs] == [45, 45] and dataset.left_out == ["img0"]
    assert len(dataset) == 10 and all(hr.shape[-1] == 24 for _, hr in (dataset[i] for i in range(10)))
    with pytest.raises(DatasetError, match="all of them"):
        PatchDataset(_pairs(size=(21, 21)), patch_size=24, skip_small=True)


def test_batched_fetch_equals_item_by_item():
    dataset = PatchDataset(_pairs(kernels=("bicubic", "nearest")), patch_size=12, patches_per_image=30)
    keys = [(4, i) for i in range(len(dataset))]
    for (lr_a, hr_a), (lr_b, hr_b) in zip(dataset.__getitems__(keys), [dataset[k] for k in keys]):
        assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)


def test_scale_augmentation_adds_shrunk_copies_with_their_own_lr():
    pairs = _pairs(n=2, size=(60, 45))
    out = rescaled_pairs(pairs, [1, 0.8, 0.5], scale=3, min_size=20)
    assert [p.name for p in out[:2]] == [p.name for p in pairs] and out[0].hr is pairs[0].hr
    shrunk = {p.name: p for p in out[2:]}
    assert sorted(shrunk) == ["img0@0.5", "img0@0.8", "img1@0.5", "img1@0.8"]
    hr = shrunk["img1@0.8"].hr
    assert hr.shape == (3, 48, 36)  # ceil(60 * 0.8), ceil(45 * 0.8), both multiples of 3
    expected = torch.round(imresize(pairs[1].hr, 0.8).clamp(0, 1) * 255) / 255
    torch.testing.assert_close(hr, modcrop(expected, 3), rtol=0, atol=0)
    torch.testing.assert_close(shrunk["img1@0.8"].lr, degrade(hr, 3), rtol=0, atol=0)
    assert shrunk["img0@0.5"].hr.shape == (3, 30, 21)  # 23 cropped to a multiple of 3
    # copies below min_size are dropped; factors outside (0, 1] are refused
    assert len(rescaled_pairs(pairs, [0.8, 0.5, 0.8], scale=3, min_size=25)) == 2
    with pytest.raises(DatasetError, match="not in"):
        rescaled_pairs(pairs, [1.5], scale=3)
