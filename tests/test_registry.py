import pytest

from harness.registry import Registry, UnknownName


def test_lookup_and_did_you_mean():
    r = Registry[int]("thing")
    r.add("hinton_kd", 1)
    r.add("ce", 2)
    assert r.get("ce") == 2 and "ce" in r and r.names() == ["ce", "hinton_kd"]
    with pytest.raises(UnknownName, match=r"unknown thing 'hinton_k'\. Did you mean 'hinton_kd'\?"):
        r.get("hinton_k")
    with pytest.raises(ValueError, match="registered twice"):
        r.add("ce", 3)
