import pytest

from gatekeeper.core.globs import GlobError, compile_host_glob, compile_path_glob

PATHS = [
    ("/robots.txt", "/robots.txt", True), ("/robots.txt", "/robots.txt/x", False),
    ("/premium/**", "/premium", True), ("/premium/**", "/premium/", True),
    ("/premium/**", "/premium/a/b", True), ("/premium/**", "/premiumx", False),
    ("/a/*/c", "/a/b/c", True), ("/a/*/c", "/a/b/d/c", False),
    ("/a/**/c", "/a/c", True), ("/a/**/c", "/a/x/y/c", True), ("/a/**/c", "/ac", False),
    ("/*.{jpg,png}", "/x.jpg", True), ("/*.{jpg,png}", "/x.gif", False),
    ("/*.{jpg,png}", "/d/x.jpg", False), ("/**/*.pdf", "/a/b/c.pdf", True),
    ("/v?/items", "/v1/items", True), ("/v?/items", "/v10/items", False),
    ("/Case", "/case", False), ("/a.b", "/axb", False), ("/a+b", "/a+b", True),
]


@pytest.mark.parametrize(("glob", "path", "expected"), PATHS)
def test_path_glob(glob: str, path: str, expected: bool) -> None:
    assert compile_path_glob(glob).match(path) is expected


@pytest.mark.parametrize(
    ("glob", "host", "expected"),
    [("example.com", "example.com", True), ("Example.COM", "example.com", True),
     ("*.example.com", "a.example.com", True), ("*.example.com", "a.b.example.com", True),
     ("*.example.com", "example.com", False), ("*.example.com", "badexample.com", False),
     ("shop-?.example.com", "shop-1.example.com", True)],
)
def test_host_glob(glob: str, host: str, expected: bool) -> None:
    assert compile_host_glob(glob).match(host) is expected


@pytest.mark.parametrize(
    "glob", ["premium", "/a/{b", "/a*/}", "/" + "*/" * 9, "/**x**y**z", "/{a,*}"]
)
def test_bad_path_globs_are_refused(glob: str) -> None:
    with pytest.raises(GlobError):
        compile_path_glob(glob)


def test_adversarial_path_does_not_stall_matching() -> None:
    pattern = compile_path_glob("/**a**b")
    assert pattern.match("/" + "a" * 5000) is False
