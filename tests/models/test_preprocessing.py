from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.preprocessing import PreprocessSpec, preprocess, resize_square


def _raw(spec: PreprocessSpec, **changes) -> PreprocessSpec:
    """The spec without intensity normalisation or mean/std, so geometry can be checked on raw values."""
    values = {**spec.to_dict(), "normalisation": "none", "mean": 0.0, "std": 1.0, **changes}
    return PreprocessSpec.from_dict(values)


def test_spec_round_trips_through_json() -> None:
    spec = PreprocessSpec(size=96, resize="crop", interpolation="bilinear", normalisation="histeq", percentiles=(2, 98))
    assert PreprocessSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"size": 4}, "size"),
        ({"resize": "zoom"}, "resize"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"normalisation": "zscore"}, "normalisation"),
        ({"percentiles": (99, 1)}, "percentiles"),
        ({"std": 0.0}, "std"),
    ],
)
def test_spec_rejects_bad_values_naming_the_field(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessSpec(**changes)


def test_spec_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown PreprocessSpec fields"):
        PreprocessSpec.from_dict({"size": 64, "colour": "rgb"})


@pytest.mark.parametrize("resize", ["letterbox", "crop", "stretch"])
@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (64, 64), (31, 517)])
def test_output_is_float32_channel_first_square(resize: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    out = preprocess(rng.random(shape, dtype=np.float32), PreprocessSpec(size=64, resize=resize))
    assert out.shape == (1, 64, 64)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


def test_area_downsampling_by_an_integer_factor_is_block_mean() -> None:
    x = np.arange(64, dtype=np.float32).reshape(8, 8) / 63
    spec = _raw(PreprocessSpec(size=8))
    np.testing.assert_allclose(resize_square(x, spec), x, atol=1e-6)  # same size: untouched
    big = np.kron(x, np.ones((4, 4), dtype=np.float32))  # 32x32 made of 4x4 constant blocks
    np.testing.assert_allclose(resize_square(big, spec), x, atol=1e-6)


def test_area_downsampling_agrees_with_pillow_on_a_smooth_image() -> None:
    # Pillow's BOX samples the filter at pixel centres; ours integrates the exact overlap: equal on smooth content.
    yy, xx = np.mgrid[0:517, 0:389].astype(np.float32)
    x = 0.5 + 0.25 * np.sin(yy / 40) * np.cos(xx / 25)
    spec = _raw(PreprocessSpec(size=64, resize="stretch"))
    ours = resize_square(x, spec)
    pillow = np.asarray(Image.fromarray(x, mode="F").resize((64, 64), Image.Resampling.BOX), dtype=np.float32)
    np.testing.assert_allclose(ours, pillow, atol=5e-3)


def test_bilinear_keeps_a_linear_ramp_linear_and_constants_constant() -> None:
    ramp = np.tile(np.linspace(0, 1, 200, dtype=np.float32), (200, 1))
    out = resize_square(ramp, _raw(PreprocessSpec(size=50, resize="stretch", interpolation="bilinear")))
    interior = out[:, 2:-2]
    assert np.all(np.diff(interior, axis=1) > 0)
    np.testing.assert_allclose(np.diff(interior, axis=1), np.diff(interior, axis=1).mean(), atol=1e-4)
    constant = np.full((123, 77), 0.3, dtype=np.float32)
    for interpolation in ("area", "bilinear"):
        out = resize_square(constant, _raw(PreprocessSpec(size=40, resize="stretch", interpolation=interpolation)))
        np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_letterbox_keeps_the_whole_image_and_pads_the_short_side() -> None:
    wide = np.ones((50, 100), dtype=np.float32)
    out = resize_square(wide, _raw(PreprocessSpec(size=64), pad_value=0.0))
    assert out[:16].max() == 0.0 and out[-16:].max() == 0.0  # 64 * 50/100 = 32 rows of image, 16 padded each side
    np.testing.assert_allclose(out[16:48], 1.0, atol=1e-6)


def test_centre_crop_cuts_the_long_side() -> None:
    tall = np.zeros((300, 100), dtype=np.float32)
    tall[100:200] = 1.0  # the central square is all ones
    out = resize_square(tall, _raw(PreprocessSpec(size=32, resize="crop")))
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_percentile_normalisation_ignores_burnt_in_text_and_exposure() -> None:
    rng = np.random.default_rng(2)
    film = (0.3 + 0.2 * rng.random((256, 256))).astype(np.float32)
    with_text = film.copy()
    with_text[5:12, 5:60] = 1.0  # a burnt-in white annotation: 0.6% of the pixels
    darker = film * 0.5  # under-exposed film of the same anatomy
    spec = PreprocessSpec(size=64, normalisation="percentile", percentiles=(1, 99))
    reference = preprocess(film, spec)
    # text pixels aside, the picture is the same whatever the annotation and the exposure
    np.testing.assert_allclose(preprocess(darker, spec), reference, atol=1e-4)
    mask = np.ones((64, 64), dtype=bool)
    mask[:5, :17] = False
    assert np.abs(preprocess(with_text, spec)[0][mask] - reference[0][mask]).max() < 0.1


def test_histogram_equalisation_flattens_the_histogram() -> None:
    rng = np.random.default_rng(3)
    skewed = (rng.random((200, 200)) ** 4).astype(np.float32)
    out = preprocess(skewed, PreprocessSpec(size=200, normalisation="histeq", mean=0.0, std=1.0))
    counts, _ = np.histogram(out, bins=10, range=(0, 1))
    assert counts.min() > 0.5 * counts.mean()


def test_constant_image_does_not_divide_by_zero() -> None:
    out = preprocess(np.full((40, 40), 0.7, dtype=np.float32), PreprocessSpec(size=32))
    assert np.isfinite(out).all()


def test_mean_and_std_are_applied_last() -> None:
    x = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = preprocess(x, PreprocessSpec(size=64, normalisation="none", mean=0.5, std=0.25))
    np.testing.assert_allclose(out[0], (x - 0.5) / 0.25, atol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((3, 8, 8)), np.zeros(10), np.zeros((1, 10))])
def test_rejects_non_grey_or_degenerate_input_with_the_shape(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"expected"):
        preprocess(bad, PreprocessSpec(size=16))


@pytest.mark.parametrize("resize", ["letterbox", "crop", "stretch"])
@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (256, 256)])
def test_map_to_image_puts_a_model_input_feature_back_where_it_was(resize: str, shape: tuple[int, int]) -> None:
    """A bright square in the image, preprocessed, mapped back from the model grid, lands on the same square."""
    from models.preprocessing import map_to_image

    height, width = shape
    image = np.zeros(shape, dtype=np.float32)
    image[height // 2 - 20 : height // 2 + 20, width // 2 - 20 : width // 2 + 20] = 1.0
    spec = PreprocessSpec(size=64, resize=resize, normalisation="none", mean=0.0, std=1.0)
    square = preprocess(image, spec)[0]
    back = map_to_image(square, height, width, spec)
    assert back.shape == shape
    inside = back[height // 2 - 12 : height // 2 + 12, width // 2 - 12 : width // 2 + 12]
    assert float(np.nanmin(inside)) > 0.7
    seen = np.isfinite(back)
    corners = np.where(seen, back, 0.0)
    assert float(corners[:20, :20].max()) < 0.05 and float(corners[-20:, -20:].max()) < 0.05
    if resize == "crop" and height != width:
        assert not seen.all()  # the cut-off ends were never seen by the model
    else:
        assert seen.all()


def test_map_to_image_rejects_non_square_maps() -> None:
    from models.preprocessing import map_to_image

    with pytest.raises(ValueError, match="square"):
        map_to_image(np.zeros((4, 5)), 10, 10, PreprocessSpec(size=64))


def test_map_to_image_at_display_size_keeps_the_film_geometry() -> None:
    """Mapping straight to a smaller display grid equals mapping to the film and then shrinking it (1552 x 1500:
    recomputing the letterbox window from the display size instead would shift it by one input row)."""
    from models.preprocessing import map_to_image, resample

    spec = PreprocessSpec(size=224)
    square = np.zeros((28, 28), dtype=np.float32)
    square[10:18, 3:9] = 1.0
    reference = resample(map_to_image(square, 1552, 1500, spec), 512, 495, "area")
    direct = map_to_image(square, 1552, 1500, spec, out_shape=(512, 495))
    assert direct.shape == (512, 495)
    assert float(np.abs(direct - reference).max()) < 0.01
