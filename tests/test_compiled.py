"""Compiled twins: built from the very source they stand for, refused when stale, same answers as Python."""

import logging
import os
import shutil
from collections import Counter

import pytest

from cah_resources import candidates, compiled, image_links
from cah_resources.image_links import CandidateFilters
from cah_resources.sample_crawl import generate_crawl
from conftest import skip_or_fail

MODULE = "cah_resources.image_links"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A twin of image_links built from scratch into a directory of its own, as installs build it."""
    twin_dir = tmp_path_factory.mktemp("twins")
    try:
        binary = compiled.build(("image_links",), twin_dir=twin_dir)[0]
    except ImportError as exc:
        skip_or_fail(f"the build tools of the compiled twins are missing ({exc})")
    return twin_dir, binary


def test_the_package_runs_a_current_twin():
    if image_links._twin is None:
        skip_or_fail("no compiled twin of image_links is built (make setup builds it)")
    assert compiled.is_current("image_links")
    assert image_links.check_image_links is image_links._twin.check_image_links
    assert image_links._twin.__file__.startswith(str(compiled.TWIN_DIR))


def test_a_built_twin_is_compiled_code_with_its_stamp(built):
    twin_dir, binary = built
    twin = compiled.twin(MODULE, twin_dir)
    assert twin is not None and twin.__file__ == str(binary)
    assert type(twin.check_image_links).__name__ == "cython_function_or_method"
    assert compiled.twin_paths("image_links", twin_dir)[1].read_text().strip() == compiled.source_digest("image_links")
    checked = twin.check_image_links([("a.jpg", "a red bicycle"), ("b.gif", "a blue car")], "https://x.org/p/", CandidateFilters())
    assert checked.kept == [("https://x.org/p/a.jpg", "a red bicycle")] and checked.dropped == ["gif"]


def test_a_stale_twin_is_refused_with_a_warning(built, tmp_path, caplog):
    twin_dir, binary = built
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(binary, stale / binary.name)
    compiled.twin_paths("image_links", stale)[1].write_text("0" * 64 + "\n")  # built from other source
    with caplog.at_level(logging.WARNING, logger="cah_resources.compiled"):
        assert compiled.twin(MODULE, stale) is None
    assert "differs from the source its compiled twin was built from" in caplog.text


def test_an_edit_to_the_source_makes_its_twin_stale(built, tmp_path):
    twin_dir, _ = built
    source = tmp_path / "source"
    source.mkdir()
    for suffix in (".py", ".pxd"):
        shutil.copy(os.path.join(compiled.PACKAGE_DIR, f"image_links{suffix}"), source)
    assert compiled.is_current("image_links", twin_dir, source)
    with open(source / "image_links.pxd", "a") as handle:
        handle.write("\n# an edit\n")
    assert not compiled.is_current("image_links", twin_dir, source)


def test_twins_can_be_turned_off_and_are_only_for_their_module(built, monkeypatch):
    twin_dir, _ = built
    assert compiled.twin("cah_resources._pure.image_links", twin_dir) is None  # a pure() copy
    assert compiled.twin("cah_resources.wat", twin_dir) is None  # no twin of its own
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    assert compiled.twin(MODULE, twin_dir) is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_twin_and_python_extract_the_same_pairs_and_counts(built, seed, tmp_path, monkeypatch):
    twin = compiled.twin(MODULE, built[0])
    crawl = generate_crawl(str(tmp_path), wat_files=1, pages_per_file=150, links_per_page=20, seed=seed)
    path = os.path.join(crawl.root, crawl.wat_paths[0])
    strict = CandidateFilters(min_alt_length=1, max_alt_length=40, long_alt="drop", drop_extensions=(".png",),
                              max_domain_length=16)
    for filters in (CandidateFilters(), strict):
        results = []
        for implementation in (twin, compiled.pure("image_links")):
            monkeypatch.setattr(candidates, "check_image_links", implementation.check_image_links)
            counts: Counter = Counter()
            results.append((list(candidates.extract_pairs(path, filters, counts).items()), counts))
        assert results[0] == results[1]
        assert len(results[0][0]) > 100 and sum(n for k, n in results[0][1].items() if k.startswith("drop_")) > 100
