"""The curation readers on real files: pydicom's and pydicom-data's test files, nibabel's and
scikit-image's bundled data, plus damaged or re-encoded copies written under tmp_path."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import skimage.data
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data.data_manager import DATA_ROOT
from pydicom.pixels import apply_modality_lut
from pydicom.uid import MPEG2MPML

from biovfm_lib.curation.frames import (
    REASONS,
    Frame,
    Unusable,
    percentile_window,
    stretch_to_uint8,
)
from biovfm_lib.curation.readers import READERS, detect_reader, read_frames, reader_options

# pydicom's own files and the pydicom-data package's, read straight from disk:
# pydicom.data.get_testdata_file would try to download any file it cannot find locally.
DICOM_DIRS = (Path(DATA_ROOT) / "test_files",
              Path(str(importlib.resources.files("data_store"))) / "data")
NIFTI_DIR = Path(NIBABEL_DATA)
IMAGE_DIR = Path(skimage.data.__file__).parent


def dicom_file(name: str) -> Path:
    for root in DICOM_DIRS:
        found = sorted(root.rglob(name))
        if found:
            return found[0]
    raise FileNotFoundError(name)


def frames_of(path, reader: str = "auto", **options) -> list[Frame]:
    return list(read_frames(path, reader, options))


def pixels_of(path, **options) -> np.ndarray:
    return np.stack([f.pixels for f in frames_of(path, **options)])


def reject(path, reader: str = "auto", **options) -> Unusable:
    with pytest.raises(Unusable) as info:
        frames_of(path, reader, **options)
    return info.value


def copy(src: Path, dst: Path, size: int | None = None) -> Path:
    """``src`` (its first ``size`` bytes, to truncate it) written to ``dst``."""
    dst.write_bytes(src.read_bytes()[:size])
    return dst


# --------------------------------------------------------------------------- detection

@pytest.mark.parametrize(("path", "reader"), [
    (dicom_file("MR_small.dcm"), "dicom"),
    (dicom_file("OT-PAL-8-face.dcm"), "dicom"),  # no preamble: found by parsing
    (dicom_file("ExplVR_LitEndNoMeta.dcm"), "dicom"),  # no preamble, no pixels, .dcm
    (dicom_file("6154"), "dicom"),  # no extension
    (NIFTI_DIR / "anatomical.nii", "nifti"),
    (NIFTI_DIR / "example4d.nii.gz", "nifti"),  # NIfTI-1 inside gzip
    (NIFTI_DIR / "example_nifti2.nii.gz", "nifti"),
    (NIFTI_DIR / "nifti1.hdr", "nifti"),  # "ni1" header of a .hdr/.img pair
    (NIFTI_DIR / "0.dcm", "dicom"),
    (IMAGE_DIR / "cell.png", "image"),
    (IMAGE_DIR / "retina.jpg", "image"),
    (IMAGE_DIR / "multipage.tif", "image"),
    (IMAGE_DIR / "no_time_for_that_tiny.gif", "image"),
], ids=lambda v: v.name if isinstance(v, Path) else v)
def test_detect_reader_by_content(path, reader):
    assert detect_reader(path) == reader


def test_detection_ignores_a_misleading_extension(tmp_path):
    png_as_dicom = copy(IMAGE_DIR / "cell.png", tmp_path / "scan.dcm")
    assert detect_reader(png_as_dicom) == "image"
    np.testing.assert_array_equal(frames_of(png_as_dicom)[0].pixels,
                                  np.asarray(Image.open(IMAGE_DIR / "cell.png")))
    dicom_without_extension = copy(dicom_file("OT-PAL-8-face.dcm"), tmp_path / "face")
    assert detect_reader(dicom_without_extension) == "dicom"


@pytest.mark.parametrize(("path", "reason"), [
    (DICOM_DIRS[0] / "README.txt", "unsupported_format"),
    (DICOM_DIRS[0] / "zipMR.gz", "unsupported_format"),  # gzip, but not NIfTI inside
    (NIFTI_DIR / "test.mgz", "unsupported_format"),
    (NIFTI_DIR / "minc2_4d.mnc", "unsupported_format"),
    (IMAGE_DIR / "motorcycle_disp.npz", "unsupported_format"),  # a zip, not MedMNIST
], ids=lambda v: v.name if isinstance(v, Path) else v)
def test_detect_reader_rejects_unknown_content(path, reason):
    with pytest.raises(Unusable) as info:
        detect_reader(path)
    assert info.value.reason == reason


def test_detection_of_damaged_or_empty_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.touch()
    for call in (lambda: detect_reader(empty), lambda: read_frames(empty, "image")):
        with pytest.raises(Unusable) as info:
            call()
        assert info.value.reason == "empty"
    half_gzip = copy(NIFTI_DIR / "example4d.nii.gz", tmp_path / "half.nii.gz", 200)
    assert reject(half_gzip).reason == "corrupt"
    # Without a preamble, a parse counts as DICOM only with image tags or a DICOM suffix
    plan = copy(dicom_file("ExplVR_LitEndNoMeta.dcm"), tmp_path / "plan")
    assert reject(plan).reason == "unsupported_format"


def test_bad_reader_names_and_options_are_config_errors(tmp_path):
    path = dicom_file("MR_small.dcm")
    with pytest.raises(ValueError, match=r"'pdf'.*'dicom'.*'image'.*'medmnist'.*'nifti'"):
        read_frames(path, "pdf")
    with pytest.raises(ValueError, match=r"\['slices'\].*'dicom'.*\['frames', 'window'\]"):
        read_frames(path, options={"slices": 3})
    with pytest.raises(ValueError, match="window"):
        read_frames(path, options={"window": "lung"})
    with pytest.raises(ValueError, match="frames"):
        read_frames(path, "dicom", {"frames": [-1]})
    with pytest.raises(ValueError, match="axes"):
        read_frames(NIFTI_DIR / "anatomical.nii", options={"axes": [3]})
    with pytest.raises(ValueError, match="percentiles"):
        read_frames(NIFTI_DIR / "anatomical.nii", options={"percentiles": [99, 1]})
    with pytest.raises(ValueError, match="frames"):
        read_frames(IMAGE_DIR / "multipage.tif", options={"frames": "middle"})
    empty = tmp_path / "empty.dcm"
    empty.touch()
    with pytest.raises(ValueError, match="slices"):  # a config error outranks a bad file
        read_frames(empty, "dicom", {"slices": 3})


def test_reader_options_list_each_readers_defaults():
    assert set(READERS) == {"dicom", "nifti", "image", "medmnist"}
    assert reader_options("dicom") == {"frames": "all", "window": "auto"}
    assert reader_options("nifti") == {"axes": (2,), "stride": 1, "volumes": "first",
                                       "percentiles": (0.5, 99.5)}
    assert reader_options("image") == {"frames": "all"}
    assert reader_options("medmnist") == {"split": "train"}


# --------------------------------------------------------------------------- DICOM

def test_monochrome1_is_inverted_so_bright_means_dense():
    path = dicom_file("RG3_UNCR.dcm")  # a computed radiograph stored as MONOCHROME1
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    [frame] = frames_of(path, window="percentile")
    np.testing.assert_array_equal(frame.pixels,
                                  255 - stretch_to_uint8(raw, *percentile_window(raw)))
    windowed = frames_of(path)[0].pixels  # the file's own window, also inverted
    assert np.corrcoef(windowed.ravel(), raw.ravel())[0, 1] < -0.9
    assert frame.bit_depth == 10 and frame.index == -1 and frame.original_size == raw.shape


def test_window_and_rescale_follow_the_header():
    path = dicom_file("693_UNCR.dcm")  # CT: rescale to HU, window 40/100
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    low = center - 0.5 - (width - 1) / 2  # DICOM's LINEAR window (PS3.3 C.11.2.1.2.1)
    expected = np.clip(np.rint((hu - low) * 255 / (width - 1)), 0, 255)
    pixels = frames_of(path)[0].pixels
    assert np.abs(pixels - expected).max() <= 1
    assert (pixels == 0).mean() > 0.5 and (pixels == 255).mean() > 0.05  # air and bone clip
    ignored = frames_of(path, window="percentile")[0].pixels
    np.testing.assert_array_equal(ignored, stretch_to_uint8(hu, *percentile_window(hu)))


def test_enhanced_ct_window_comes_from_the_functional_groups():
    path = dicom_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    groups = ds.SharedFunctionalGroupsSequence[0]
    rescale = groups.PixelValueTransformationSequence[0]
    voi = groups.FrameVOILUTSequence[0]
    hu = ds.pixel_array[1] * float(rescale.RescaleSlope) + float(rescale.RescaleIntercept)
    low = float(voi.WindowCenter) - 0.5 - (float(voi.WindowWidth) - 1) / 2
    expected = np.clip(np.rint((hu - low) * 255 / (float(voi.WindowWidth) - 1)), 0, 255)
    [frame] = frames_of(path, frames=[1])
    assert frame.index == 1
    assert np.abs(frame.pixels - expected).max() <= 1


def test_voi_lut_sequence_is_applied():
    path = dicom_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    item = ds.VOILUTSequence[0]
    entries, first = item.LUTDescriptor[0], item.LUTDescriptor[1]
    lut = np.asarray(item.LUTData)
    mapped = lut[np.clip(ds.pixel_array.astype(int) - first, 0, entries - 1)]
    np.testing.assert_array_equal(frames_of(path)[0].pixels,
                                  stretch_to_uint8(mapped, lut.min(), lut.max()))


def test_modality_lut_sequence_feeds_the_percentile_window():
    path = dicom_file("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(frames_of(path)[0].pixels,
                                  stretch_to_uint8(values, *percentile_window(values)))


@pytest.mark.parametrize("names", [
    ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),  # JPEG 2000 lossless
    ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
     "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"),
    ("emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
     "emri_small_jpeg_ls_lossless.dcm", "emri_small_big_endian.dcm"),  # 10 frames each
    ("US1_UNCR.dcm", "US1_J2KR.dcm"),  # RGB vs JPEG 2000 with reversible colour transform
    ("SC_rgb.dcm", "SC_rgb_rle.dcm", "SC_rgb_expb.dcm", "SC_rgb_jpeg_gdcm.dcm"),
    ("OBXXXX1A.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"),  # palette colour
    ("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"),  # 16-bit segmented palette
], ids=lambda names: names[0])
def test_lossless_encodings_of_one_image_give_identical_frames(names):
    reference, *others = [pixels_of(dicom_file(n)) for n in names]
    assert reference.std() > 10
    for name, pixels in zip(names[1:], others):
        np.testing.assert_array_equal(pixels, reference, err_msg=name)


def test_colour_interpretations_end_up_rgb():
    rgb = pixels_of(dicom_file("SC_rgb.dcm"))[0].astype(int)
    for name in ("SC_ybr_full_uncompressed.dcm", "SC_ybr_full_422_uncompressed.dcm",
                 "SC_rgb_jpeg_dcmtk.dcm"):  # YBR_FULL(_422), raw and JPEG-coded
        pixels = pixels_of(dicom_file(name))[0]
        assert pixels.shape == (100, 100, 3)
        assert np.abs(pixels - rgb).mean() < 2, name
    palette = frames_of(dicom_file("OT-PAL-8-face.dcm"))[0]  # palette file without preamble
    assert palette.pixels.shape == (480, 640, 3) and palette.bit_depth == 8
    assert np.ptp(palette.pixels.astype(int), axis=2).mean() > 5  # really coloured


def test_multi_frame_selection():
    path = dicom_file("emri_small.dcm")
    count = int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames)
    frames = frames_of(path)
    assert count == 10 and [f.index for f in frames] == list(range(count))
    assert len({f.pixels.tobytes() for f in frames}) == count
    [middle] = frames_of(path, frames="middle")
    assert middle.index == 5
    np.testing.assert_array_equal(middle.pixels, frames[5].pixels)
    assert [f.index for f in frames_of(path, frames=[7, 2, 99])] == [7, 2]
    assert reject(path, frames=[99]).reason == "empty"
    assert [f.index for f in frames_of(dicom_file("MR_small.dcm"), frames="middle")] == [-1]


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm",
                                  "ExplVR_LitEndNoMeta.dcm", "DICOMDIR"])
def test_dicom_without_pixels_is_not_an_image(name):
    assert reject(dicom_file(name)).reason == "not_an_image"


@pytest.mark.parametrize("name", ["rtdose.dcm", "liver.dcm"])
def test_dicom_label_masks_and_dose_grids_are_not_images(name):
    """Their pixels decode, but a segmentation mask or a dose grid is not a medical image."""
    assert "derived maps" in reject(dicom_file(name)).detail


@pytest.mark.filterwarnings("ignore")
def test_damaged_dicom_is_corrupt(tmp_path):
    assert reject(dicom_file("MR_truncated.dcm")).reason == "corrupt"
    assert reject(dicom_file("emri_small_jpeg_2k_lossless_too_short.dcm")).reason == "corrupt"
    source = dicom_file("MR_small.dcm")
    half = copy(source, tmp_path / "half.dcm", source.stat().st_size // 2)
    assert reject(half).reason == "corrupt"
    compressed = dicom_file("MR_small_jp2klossless.dcm")
    cut = copy(compressed, tmp_path / "cut.dcm", compressed.stat().st_size - 2000)
    assert reject(cut).reason == "corrupt"


def test_transfer_syntax_without_decoder_is_unsupported(tmp_path):
    ds = pydicom.dcmread(dicom_file("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # encapsulated video: no pixel handler
    ds.save_as(tmp_path / "video.dcm")
    error = reject(tmp_path / "video.dcm")
    assert error.reason == "unsupported_syntax" and "MPEG2" in error.detail


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("root", "decodable"), [
    (DICOM_DIRS[0], 70), (DICOM_DIRS[1], 60), (NIFTI_DIR, 6), (IMAGE_DIR, 25),
], ids=["pydicom", "pydicom-data", "nibabel", "skimage"])
def test_every_bundled_file_gives_frames_or_a_known_reason(root, decodable):
    """Any file, whatever it holds, yields frames or a categorised rejection: nothing else."""
    outcomes = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        try:
            reader = detect_reader(path)
            options = {"frames": "middle"} if reader == "dicom" else {}  # 120-frame cine loop
            frames = frames_of(path, reader, **options)
            assert frames and all(isinstance(f, Frame) for f in frames)
            outcomes[path.name] = "ok"
        except Unusable as err:
            assert err.reason in REASONS
            outcomes[path.name] = err.reason
    assert sum(v == "ok" for v in outcomes.values()) >= decodable, outcomes


# --------------------------------------------------------------------------- NIfTI

def canonical_slices(path: Path, axis: int, volume: int = 0) -> list[np.ndarray]:
    """nibabel's own RAS reorientation, windowed like the reader and rotated for display."""
    data = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj, dtype=np.float32)
    data = data[..., volume] if data.ndim == 4 else data
    low, high = percentile_window(data)
    return [stretch_to_uint8(np.rot90(np.take(data, i, axis=axis)), low, high)
            for i in range(data.shape[axis])]


def test_nifti_slices_follow_ras_axes():
    path = NIFTI_DIR / "anatomical.nii"  # stored LAS: the reader must flip x
    frames = frames_of(path, axes=[0, 1, 2])
    assert len(frames) == 33 + 41 + 25 and frames[0].bit_depth == 16
    expected = {axis: canonical_slices(path, axis) for axis in range(3)}
    for frame in frames:
        axis, i = divmod(frame.index, 100_000)
        np.testing.assert_array_equal(frame.pixels, expected[axis][i])


def test_nifti_storage_order_does_not_change_the_slices(tmp_path):
    img = nib.load(NIFTI_DIR / "anatomical.nii")
    permuted = img.as_reoriented(np.array([[2, -1], [0, 1], [1, -1]]))  # stored as A, I, R
    nib.save(permuted, tmp_path / "permuted.nii")
    assert nib.aff2axcodes(permuted.affine) == ("A", "I", "R")
    ours = frames_of(tmp_path / "permuted.nii", axes=[0, 1, 2], stride=2)
    theirs = frames_of(NIFTI_DIR / "anatomical.nii", axes=[0, 1, 2], stride=2)
    assert len(ours) == 17 + 21 + 13
    assert [f.index for f in ours] == [f.index for f in theirs]
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_nifti_4d_volumes():
    path = NIFTI_DIR / "example4d.nii.gz"  # (128, 96, 24, 2), gzipped
    first = frames_of(path)
    every = frames_of(path, volumes="all")
    assert len(first) == 24 and len(every) == 2 * 24
    assert [f.index for f in every] == [v * 1_000_000 + 200_000 + i
                                        for v in range(2) for i in range(24)]
    assert first[0].pixels.shape == (96, 128) and first[0].original_size == (96, 128)
    for frame, expected in zip(every[24:], canonical_slices(path, 2, volume=1)):
        np.testing.assert_array_equal(frame.pixels, expected)
    assert len(frames_of(NIFTI_DIR / "example_nifti2.nii.gz", volumes="all")) == 2 * 12


def test_nifti_options_and_empty_slices(tmp_path):
    path = NIFTI_DIR / "reoriented_anat_moved.nii"  # float32, zero padding around the brain
    frames = frames_of(path)
    assert frames[0].bit_depth == 32 and len(frames) == 19  # 3 of 22 slices are all padding
    data = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)
    minmax = frames_of(path, percentiles=[0, 100])[0].pixels
    i = frames[0].index % 100_000
    np.testing.assert_array_equal(minmax, stretch_to_uint8(np.rot90(data[:, :, i]), data.min(),
                                                           data.max()))
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), 7, np.int16), np.eye(4)), tmp_path / "flat.nii")
    assert reject(tmp_path / "flat.nii").reason == "zero_variance"


def test_damaged_nifti_is_corrupt(tmp_path):
    source = NIFTI_DIR / "anatomical.nii"
    assert reject(copy(source, tmp_path / "half.nii", source.stat().st_size // 2)
                  ).reason == "corrupt"
    assert reject(NIFTI_DIR / "nifti1.hdr").reason == "corrupt"  # its .img is missing
    assert reject(NIFTI_DIR / "row_major.dconn.nii").reason == "not_an_image"  # CIFTI matrix


# --------------------------------------------------------------------------- raster images

def test_eight_bit_images_are_kept_exactly():
    for name, shape in (("cell.png", (660, 550)), ("retina.jpg", (1411, 1411, 3))):
        [frame] = frames_of(IMAGE_DIR / name)
        assert frame.pixels.shape == shape and frame.index == -1 and frame.bit_depth == 8
        np.testing.assert_array_equal(frame.pixels, np.asarray(Image.open(IMAGE_DIR / name)))


def test_sixteen_bit_png_ramp_gets_the_percentile_window(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    [frame] = frames_of(tmp_path / "ramp.png")
    assert frame.bit_depth == 16 and frame.pixels.shape == (64, 256)
    np.testing.assert_array_equal(frame.pixels, stretch_to_uint8(ramp, *percentile_window(ramp)))
    row = frame.pixels[0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()
    assert abs(row[128] - 128) <= 1


def test_mode_conversions_keep_grey_grey_and_colour_colour(tmp_path):
    camera = Image.open(IMAGE_DIR / "camera.png")
    astronaut = Image.open(IMAGE_DIR / "astronaut.png")
    camera.convert("P").save(tmp_path / "grey_palette.png")
    astronaut.quantize(64).save(tmp_path / "palette.png")
    astronaut.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    camera.convert("LA").save(tmp_path / "grey_alpha.png")
    camera.convert("1").save(tmp_path / "bilevel.png")
    camera.convert("F").save(tmp_path / "float.tif")
    expected = {"grey_palette.png": (512, 512), "palette.png": (512, 512, 3),
                "cmyk.jpg": (512, 512, 3), "grey_alpha.png": (512, 512),
                "bilevel.png": (512, 512), "float.tif": (512, 512)}
    pixels = {name: frames_of(tmp_path / name)[0].pixels for name in expected}
    assert {name: p.shape for name, p in pixels.items()} == expected
    np.testing.assert_array_equal(pixels["grey_palette.png"], np.asarray(camera))
    np.testing.assert_array_equal(pixels["grey_alpha.png"], np.asarray(camera))
    assert np.abs(pixels["cmyk.jpg"].astype(int) - np.asarray(astronaut)).mean() < 6
    assert set(np.unique(pixels["bilevel.png"])) == {0, 255}
    assert frames_of(tmp_path / "bilevel.png")[0].bit_depth == 1
    assert np.corrcoef(pixels["float.tif"].ravel(), np.asarray(camera).ravel())[0, 1] > 0.99
    [rgba] = frames_of(IMAGE_DIR / "horse.png")  # RGBA: alpha dropped
    assert rgba.pixels.shape == (328, 400, 3)


def test_multi_page_files():
    pages = frames_of(IMAGE_DIR / "multipage.tif")
    assert [f.index for f in pages] == [0, 1] and pages[0].pixels.shape == (15, 10)
    assert not np.array_equal(pages[0].pixels, pages[1].pixels)
    assert [f.index for f in frames_of(IMAGE_DIR / "multipage.tif", frames="first")] == [0]
    assert len(frames_of(IMAGE_DIR / "no_time_for_that_tiny.gif")) == 24


def test_damaged_or_unsupported_images(tmp_path):
    source = IMAGE_DIR / "cell.png"
    assert reject(copy(source, tmp_path / "half.png", source.stat().st_size // 2)
                  ).reason == "corrupt"
    assert reject(copy(source, tmp_path / "header.png", 30)).reason == "corrupt"
    jpeg = IMAGE_DIR / "retina.jpg"
    assert reject(copy(jpeg, tmp_path / "half.jpg", jpeg.stat().st_size // 2)
                  ).reason == "corrupt"
    error = reject(IMAGE_DIR / "multipage_rgb.tif")  # float64 RGB pages: beyond Pillow
    assert error.reason == "unsupported_syntax"


# --------------------------------------------------------------------------- MedMNIST npz

@pytest.fixture
def medmnist_npz(tmp_path):
    """A MedMNIST-layout npz of real pixels: grey, RGB and (N, H, W, 1) splits of crops."""
    grey = np.asarray(Image.open(IMAGE_DIR / "camera.png"))
    rgb = np.asarray(Image.open(IMAGE_DIR / "astronaut.png"))
    crops = [np.s_[28 * i:28 * (i + 1), 100:128] for i in range(10)]
    path = tmp_path / "bloodmnist.npz"
    np.savez_compressed(path, train_images=np.stack([grey[c] for c in crops]),
                        train_labels=np.zeros((10, 1), np.uint8),
                        val_images=np.stack([rgb[c] for c in crops[:2]]),
                        test_images=np.stack([grey[c] for c in crops[:3]])[..., None])
    return path


def test_medmnist_rows_stream_as_frames(medmnist_npz):
    assert detect_reader(medmnist_npz) == "medmnist"
    with np.load(medmnist_npz) as arrays:
        train, val = arrays["train_images"], arrays["val_images"]
        test = arrays["test_images"]
    frames = frames_of(medmnist_npz)
    assert [f.index for f in frames] == list(range(10)) and frames[0].bit_depth == 8
    np.testing.assert_array_equal(np.stack([f.pixels for f in frames]), train)
    np.testing.assert_array_equal(pixels_of(medmnist_npz, split="val"), val)
    np.testing.assert_array_equal(pixels_of(medmnist_npz, split="test"), test[..., 0])


def test_medmnist_problems(medmnist_npz, tmp_path):
    np.savez(tmp_path / "train_only.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    assert reject(tmp_path / "train_only.npz", split="val").reason == "empty"
    np.savez(tmp_path / "volumes.npz", train_images=np.zeros((2, 28, 28, 28), np.uint8))
    assert reject(tmp_path / "volumes.npz").reason == "not_an_image"
    half = copy(medmnist_npz, tmp_path / "half.npz", medmnist_npz.stat().st_size // 2)
    assert reject(half, "medmnist").reason == "corrupt"


def test_file_content_is_read_while_iterating(tmp_path):
    """Options and detection fail at the call, a file's content only once frames are asked
    for, so a pipeline can hand out the iterator before the work starts."""
    broken = copy(dicom_file("MR_small.dcm"), tmp_path / "broken.dcm", 1000)
    frames = read_frames(broken)
    with pytest.raises(Unusable):
        next(frames)
