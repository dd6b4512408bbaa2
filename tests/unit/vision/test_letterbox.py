import numpy as np
import pytest

from trtserve.vision.letterbox import Letterbox, letterbox

SIZES = [(240, 320), (360, 480), (256, 256), (100, 1000), (1000, 7), (17, 33), (2160, 3840), (50, 40)]


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("input_hw", [(256, 256), (320, 192)])
def test_round_trip_is_exact(hw: tuple[int, int], input_hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    h, w = hw
    x0 = rng.uniform(0, w / 2, 50)
    y0 = rng.uniform(0, h / 2, 50)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0, w / 2, 50), y0 + rng.uniform(0, h / 2, 50)], 1)
    geo = Letterbox.plan(hw, input_hw)
    back = geo.to_original(geo.to_input(boxes), clip=False)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-3 * max(h, w) / 1000 + 1e-4)


@pytest.mark.parametrize("hw", SIZES)
def test_content_lands_exactly_where_the_geometry_says(hw: tuple[int, int]) -> None:
    h, w = hw
    frame = np.full((h, w, 3), 7, np.uint8)
    out, geo = letterbox(frame, (256, 256), pad_value=114)
    assert out.shape == (256, 256, 3)
    x0, y0, x1, y1 = geo.to_input(np.array([[0, 0, w, h]]))[0]
    assert (x0, y0) == (geo.pad_left_px, geo.pad_top_px)
    assert (round(float(x1)), round(float(y1))) == (geo.pad_left_px + geo.resized_width_px,
                                                     geo.pad_top_px + geo.resized_height_px)
    content = np.zeros((256, 256), bool)
    content[int(y0):round(float(y1)), int(x0):round(float(x1))] = True
    assert (out[content] == 7).all()
    assert (out[~content] == 114).all()
    # aspect ratio kept: the image fills one axis fully
    assert geo.resized_width_px == 256 or geo.resized_height_px == 256


def test_clipping_and_out_buffer() -> None:
    geo = Letterbox.plan((240, 320), (256, 256))
    boxes = geo.to_original(np.array([[-50.0, -50.0, 400.0, 400.0]]))
    np.testing.assert_array_equal(boxes, [[0, 0, 320, 240]])
    buf = np.empty((256, 256, 3), np.uint8)
    out, _ = letterbox(np.zeros((240, 320, 3), np.uint8), (256, 256), out=buf)
    assert out is buf


def test_non_positive_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        Letterbox.plan((0, 10), (256, 256))


@pytest.mark.parametrize("mean, std, order, layout", [
    ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "rgb", "nchw"),  # fast path
    ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bgr", "nchw"),  # fast path with shift and scale
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "rgb", "nchw"),  # ImageNet: per-channel path
    ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "rgb", "nhwc"),
])
def test_normalization_matches_the_formula(mean, std, order, layout) -> None:  # type: ignore[no-untyped-def]
    from trtserve.config import InputSpec
    from trtserve.vision.preprocess import Preprocessor

    spec = InputSpec(None, layout, 8, 8, order, 1 / 255, mean, std, 114)
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    src = x[..., ::-1] if order == "rgb" else x
    expected = (src.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
    if layout == "nchw":
        expected = expected.transpose(0, 3, 1, 2)
    got = Preprocessor(spec).to_tensor(x)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    strided = np.zeros((2, 8, 16, 3), np.uint8)[:, :, ::2]  # frames that are views with gaps
    strided[...] = x
    np.testing.assert_array_equal(Preprocessor(spec).to_tensor(list(strided)), got)
    half = Preprocessor(spec, np.dtype(np.float16)).to_tensor(x)  # an FP16-input engine
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, got.astype(np.float16))


def test_a_frame_of_another_size_is_refused_not_normalized_into_garbage() -> None:
    from trtserve.config import InputSpec
    from trtserve.vision.preprocess import Preprocessor

    pre = Preprocessor(InputSpec(None, "nchw", 16, 24, "rgb", 1 / 255, (0.0,) * 3, (1.0,) * 3, 114))
    for bad in (np.zeros((8, 8, 3), np.uint8), np.zeros((16, 24, 3), np.float32), np.zeros((16, 24, 4), np.uint8)):
        with pytest.raises(ValueError, match=r"expected uint8\[16, 24, 3\]"):
            pre.to_tensor([bad])


def test_interpolation_is_configurable_and_keeps_the_geometry() -> None:
    from trtserve.vision.letterbox import letterbox

    frame = np.random.default_rng(3).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    linear, geo_linear = letterbox(frame, (256, 256), interpolation="linear")
    area, geo_area = letterbox(frame, (256, 256), interpolation="area")
    assert geo_linear == geo_area  # the inverse mapping does not depend on the filter
    assert not np.array_equal(linear, area)  # shrinking: INTER_AREA averages, INTER_LINEAR samples
    small = frame[:100, :100]
    up_linear, _ = letterbox(small, (256, 256), interpolation="linear")
    up_area, _ = letterbox(small, (256, 256), interpolation="area")
    assert np.array_equal(up_linear, up_area)  # enlarging is INTER_LINEAR either way


@pytest.mark.parametrize("in_model", [False, True])
def test_reused_batch_array_gives_the_same_tensor_and_stays_per_thread(in_model: bool) -> None:
    import threading

    from trtserve.config import InputSpec
    from trtserve.vision.preprocess import Preprocessor

    pre = Preprocessor(InputSpec(None, "nchw", 16, 24, "rgb", 1 / 255, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7), 114),
                       in_model=in_model)
    rng = np.random.default_rng(5)
    first = list(rng.integers(0, 256, (4, 16, 24, 3), dtype=np.uint8))
    second = list(rng.integers(0, 256, (2, 16, 24, 3), dtype=np.uint8))
    expected_first, expected_second = pre.to_input(first), pre.to_input(second)
    a = pre.to_input(first, reuse=True)
    np.testing.assert_array_equal(a, expected_first)
    b = pre.to_input(second, reuse=True)  # a smaller batch: a view of the same array, now overwritten
    np.testing.assert_array_equal(b, expected_second)
    assert np.shares_memory(a, b) and b.shape[0] == 2 and b.flags.c_contiguous
    assert not np.shares_memory(pre.to_input(first), b)  # without reuse: a new array each time
    bigger = pre.to_input(first + second, reuse=True)  # larger than any before: a new array, kept from now on
    np.testing.assert_array_equal(bigger, np.concatenate([expected_first, expected_second]))
    assert not np.shares_memory(bigger, a) and np.shares_memory(pre.to_input(first, reuse=True), bigger)
    other: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: other.append(pre.to_input(first, reuse=True)))
    thread.start()
    thread.join()
    assert not np.shares_memory(other[0], bigger)  # every engine thread has its own
    np.testing.assert_array_equal(other[0], expected_first)
