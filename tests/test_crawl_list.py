"""The crawl list: read from a URL, a path or a file:// URL; an unusable one is one line; newest matching ids chosen."""

import functools
import http.server
import json
import socket
import threading

import pytest

from cah_resources.crawl.crawl_list import CrawlListError, choose_crawls, read_crawl_list

IDS = ["CC-MAIN-2024-18", "CC-MAIN-2024-10", "CC-MAIN-2023-50", "CC-MAIN-2008-2009", "CC-NEWS-2024-01"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A collinfo.json as Common Crawl publishes it, and a broken one."""
    root = tmp_path_factory.mktemp("crawl_list")
    listing = [{"id": i, "name": i, "cdx-api": f"https://index.commoncrawl.org/{i}-index"} for i in IDS]
    (root / "collinfo.json").write_text(json.dumps(listing))
    (root / "broken.json").write_text('{"id": "CC-MAIN-2024-10"')
    return root


@pytest.fixture(scope="module")
def server(folder):
    """The folder served over HTTP on loopback (the test's stand-in for index.commoncrawl.org)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_crawl_list_is_read_from_a_url_or_a_local_file(folder, server):
    assert read_crawl_list(f"{server}/collinfo.json") == IDS
    assert read_crawl_list(str(folder / "collinfo.json")) == IDS
    assert read_crawl_list(f"file://{folder / 'collinfo.json'}") == IDS


@pytest.mark.parametrize(
    "where, says",
    [
        ("{server}/missing.json", "answered HTTP 404"),
        ("{server}/broken.json", "is not a JSON list"),
        ("http://127.0.0.1:{port}/collinfo.json", "is unreachable"),
        ("{folder}/nowhere.json", "is unreachable"),
    ],
)
def test_an_unusable_crawl_list_is_one_line_saying_why(folder, server, where, says):
    location = where.format(server=server, port=_unused_port(), folder=folder)
    with pytest.raises(CrawlListError, match=says) as caught:
        read_crawl_list(location, timeout_s=5)
    assert "\n" not in str(caught.value) and location in str(caught.value)


def test_the_newest_matching_crawls_are_chosen():
    assert choose_crawls(IDS, r"^CC-MAIN-\d{4}-\d{2}$", 2) == ["CC-MAIN-2024-18", "CC-MAIN-2024-10"]
    assert choose_crawls(IDS, r"^CC-MAIN-2023", 5) == ["CC-MAIN-2023-50"]
    assert choose_crawls(IDS, r"^CC-MAIN-\d{4}-\d{2}$", 0) == []
