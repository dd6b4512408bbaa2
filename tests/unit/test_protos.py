from pathlib import Path

from trtserve.protogen import ROOT, generate


def test_committed_stubs_match_the_proto_sources(tmp_path: Path) -> None:
    generated = generate(tmp_path)
    assert generated
    for path in generated:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} missing: run `make protos`"
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale: run `make protos`"


def test_stubs_import_and_round_trip() -> None:
    from trtserve.v1 import detection_pb2 as pb
    from trtserve.v1 import detection_pb2_grpc

    request = pb.DetectRequest(model="shapes", stream_id="cam-1", sequence=7,
                               image=pb.Image(raw=pb.RawImage(pixels=b"\0" * 12, height=2, width=2,
                                                              format=pb.PIXEL_FORMAT_BGR8)))
    assert pb.DetectRequest.FromString(request.SerializeToString()) == request
    assert not request.thresholds.HasField("score")
    assert hasattr(detection_pb2_grpc, "DetectionServiceServicer")
