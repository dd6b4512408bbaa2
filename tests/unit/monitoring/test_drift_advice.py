"""The below-threshold drift warning says what to do from the calibration coverage: recalibrate on recent frames
when the scene left the calibrated ranges, change the method when it did not (the 0.0004 case of a real YOLOv8n)."""

from trtserve.monitoring.drift import SCENE_SHIFT_OUT_OF_RANGE, drift_advice


def test_low_coverage_blames_the_method_not_the_scene() -> None:
    advice = drift_advice(0.0004, True)
    assert "0.0004 of activations out of range" in advice and "the calibration method's, not the scene's" in advice
    assert "--method percentile" in advice and "--auto-exclude" in advice and "recent frames" not in advice


def test_many_activations_out_of_range_mean_the_scene_moved() -> None:
    for ratio in (SCENE_SHIFT_OUT_OF_RANGE, 0.2):
        advice = drift_advice(ratio, True)
        assert "the scene may have moved away from the calibration set: recalibrate with recent frames" in advice
        assert "method" not in advice


def test_without_coverage_the_cause_is_not_guessed() -> None:
    advice = drift_advice(0.0, False)
    assert "not measured" in advice and "scene" not in advice and "method" not in advice
