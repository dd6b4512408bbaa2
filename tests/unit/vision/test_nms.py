import numpy as np
import pytest

from trtserve.vision.nms import box_iou, nms


def brute_force_nms(boxes, scores, thr, classes=None):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        ok = True
        for k in keep:
            if classes is not None and classes[i] != classes[k]:
                continue
            x0, y0 = max(boxes[i][0], boxes[k][0]), max(boxes[i][1], boxes[k][1])
            x1, y1 = min(boxes[i][2], boxes[k][2]), min(boxes[i][3], boxes[k][3])
            inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
            a = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
            b = (boxes[k][2] - boxes[k][0]) * (boxes[k][3] - boxes[k][1])
            if inter / (a + b - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("class_aware", [False, True])
def test_matches_brute_force(seed: int, class_aware: bool) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    xy = rng.uniform(0, 200, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], 1)
    scores = rng.choice(np.linspace(0.1, 1.0, 20), n)  # many exact ties
    classes = rng.integers(0, 3, n) if class_aware else None
    thr = float(rng.uniform(0.2, 0.7))
    got = nms(boxes, scores, thr, classes).tolist()
    assert got == brute_force_nms(boxes.tolist(), scores.tolist(), thr,
                                  None if classes is None else classes.tolist())


def test_max_detections_and_empty() -> None:
    boxes = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]], float)
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5, max_detections=2).tolist() == [1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_box_iou_known_values() -> None:
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]]))
    np.testing.assert_allclose(iou, [[1 / 3, 0.0, 1.0]])


def test_boxes_without_area_are_dropped_and_never_suppress() -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 5, 5, 20], [0, 0, 10, 10], [30, 30, 20, 40], [1, 1, 11, 11]], float)
    scores = np.array([0.5, 0.99, 0.4, 0.98, 0.3])
    # 1 has zero width, 3 negative width: not detections; 2 duplicates 0 (IoU 1); 4 overlaps 0 by IoU 0.68
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert nms(boxes, scores, 0.7).tolist() == [0, 4]
    assert nms(boxes[[1, 3]], scores[[1, 3]], 0.5).tolist() == []


def test_class_ids_of_any_integer_type_and_large_coordinates() -> None:
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 4000, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 400, (200, 2))], 1)
    scores = rng.uniform(0, 1, 200).astype(np.float32)
    classes = rng.integers(0, 80, 200).astype(np.uint8)
    got = nms(boxes, scores, 0.45, classes, max_detections=50).tolist()
    assert got == brute_force_nms(boxes.tolist(), scores.tolist(), 0.45, classes.tolist())[:50]


def test_what_opencv_is_given_changes_nothing_about_the_contract() -> None:
    # negative coordinates: boxes of other classes never suppress each other (OpenCV's class offset assumes x, y >= 0)
    twins = np.array([[-50, -50, 10, 10], [-50, -50, 10, 10]], float)
    assert nms(twins, np.array([0.9, 0.8]), 0.45, np.array([0, 1])).tolist() == [0, 1]
    assert nms(twins, np.array([0.9, 0.8]), 0.45, np.array([3, 3])).tolist() == [0]
    # scores of any sign, and float64 near-ties, keep their order (OpenCV wants positive float32 scores)
    apart = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], float)
    assert nms(apart, np.array([0.0, -1.0, 0.5]), 0.5).tolist() == [2, 0, 1]
    assert nms(apart[:2], np.array([0.5, 0.5 + 1e-12]), 0.5).tolist() == [1, 0]
    assert nms(apart, np.array([np.nan, 0.2, 0.1]), 0.5).tolist() == [1, 2, 0]
    # class ids beyond int32 stay distinct classes
    assert nms(twins, np.array([0.9, 0.8]), 0.45, np.array([2**32, 0], np.int64)).tolist() == [0, 1]
    assert nms(apart, np.array([0.1, 0.2, 0.3]), 0.5, max_detections=0).tolist() == []


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_with_negative_coordinates_and_scores(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 150))
    xy = rng.uniform(-300, 100, (n, 2))
    boxes = np.concatenate([xy, xy + rng.integers(5, 80, (n, 2))], 1)
    scores = rng.normal(0, 1, n)
    classes = rng.integers(-2, 3, n)
    got = nms(boxes, scores, 0.5, classes).tolist()
    assert got == brute_force_nms(boxes.tolist(), scores.tolist(), 0.5, classes.tolist())
