from cascade.protogen import stale_files


def test_committed_stubs_match_the_protos() -> None:
    assert stale_files() == [], "run `make protos` and commit the result"
