"""Speed of the candidates stage on one core: its ceiling, extraction, the whole step with gcld3, cc2dataset.

    .venv/bin/python benchmarks/candidates_bench.py            # ~100 MB WAT, best of 3
    .venv/bin/python benchmarks/candidates_bench.py --mb 10    # quick run

Every contender runs in its own fresh process pinned to CPU 0, over the same cached WAT file (in
the page cache), interleaved round by round; the best of ``--repeats`` rounds counts. Figures are
MB of compressed WAT file per CPU second of that process, and ratios between contenders measured
in the same run.

The WAT file is generated (seeded) with the record mix of a real Common Crawl WAT: per capture a
request, a response and a WARC metadata record, ~40% of responses not HTML (so ~80% of records
carry no HTML-Metadata), HTML pages with tens of links of every kind and about a quarter of them
``IMG@/src`` with real-world alt text habits (missing, empty, lazy-load data: URLs, logos repeated
on every page of a site, ...). The reference, cc2dataset, is installed from PyPI into a throwaway
virtual environment under benchmarks/.work/ and its per-WAT function ``process_wat`` is called
directly (its module imports pyspark, but no Spark session or Java is started).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
CC2DATASET = "cc2dataset==1.5.0"
CC2DATASET_VENV = WORK / "cc2dataset-venv"
CRAWL = "CC-MAIN-BENCH"
MEASURED_CPU = 0
# CPU seconds (user + system) of the measuring process, all threads: on a machine shared with
# other work, wall time also counts the others' turns on the CPU; this counts only ours.
clock = time.process_time
CONTENDERS = ("ceiling", "extraction", "step", "cc2dataset")
LABELS = {
    "ceiling": "ceiling: fastwarc + msgspec.json.decode of every record",
    "extraction": "extraction: parse, links, URL resolution, filters, dedup",
    "step": "candidates step: extraction + gcld3 + part parquet",
    "cc2dataset": "cc2dataset {version} process_wat(path, 'image')",
}

# ---------------------------------------------------------------------------------------------
# The WAT file
# ---------------------------------------------------------------------------------------------

WORDS = {
    "en": "photo of the new red house garden kitchen with modern design and wooden table woman man "
    "smiling dog running beach sunset city street night view mountain lake summer dress shoes "
    "black leather bag vintage car engine product image front cover book author wedding party "
    "team players stadium football match logo blue sky flowers spring".split(),
    "de": "Foto des neuen roten Hauses Garten Küche mit modernem Design und Holztisch Frau Mann "
    "lächelnd Hund am Strand Sonnenuntergang Stadt Straße bei Nacht Blick auf die Berge See "
    "Sommerkleid Schuhe schwarze Ledertasche Oldtimer Motor Produktbild Buchcover Hochzeit".split(),
    "fr": "photo de la nouvelle maison rouge jardin cuisine au design moderne avec table en bois "
    "femme homme souriant chien courant plage coucher de soleil rue la nuit vue montagne lac "
    "robe été chaussures sac en cuir noir voiture ancienne moteur couverture du livre mariage".split(),
    "es": "foto de la nueva casa roja jardín cocina con diseño moderno y mesa de madera mujer "
    "hombre sonriendo perro corriendo playa atardecer ciudad calle de noche vista montaña lago "
    "vestido de verano zapatos bolso de cuero negro coche antiguo motor portada del libro boda".split(),
    "ru": "фото нового красного дома сад кухня с современным дизайном и деревянным столом женщина "
    "мужчина улыбается собака бежит по пляжу закат город улица ночью вид на горы озеро летнее "
    "платье туфли черная кожаная сумка старинный автомобиль двигатель обложка книги свадьба".split(),
    "ja": "新しい 赤い 家 の 写真 庭 キッチン モダン な デザイン 木製 テーブル 女性 男性 笑顔 犬 "
    "ビーチ 夕日 街 夜 景色 山 湖 夏 ドレス 靴 黒い 革 バッグ 車 エンジン 商品 画像 本 表紙 結婚式".split(),
}
LANGUAGE_WEIGHTS = {"en": 55, "de": 10, "fr": 9, "es": 10, "ru": 9, "ja": 7}
# What an <img> carries on real pages, by share of IMG@/src links (rough Common Crawl habits).
IMG_KINDS = {
    "no_alt": 30,
    "empty_alt": 12,
    "short_alt": 6,
    "lazy_data_url": 5,
    "svg": 4,
    "gif": 3,
    "site_image": 8,
    "javascript": 0.3,
    "ftp": 0.1,
    "long_domain": 0.2,
    "absolute": 14,
    "root_relative": 8,
    "relative": 4,
    "protocol_relative": 3,
    "messy_alt": 2,
    "camera_name": 1,
    "huge_alt": 0.3,
    "fragment": 0.3,
    "upper_scheme": 0.3,
}
OTHER_LINKS = (
    ("A@/href", 70),
    ("LINK@/href", 10),
    ("SCRIPT@/src", 10),
    ("FORM@/action", 2),
    ("IMG@/data-src", 3),
    ("IFRAME@/src", 2),
    ("A@/href#title", 3),
)
NON_HTML_TYPES = ("application/pdf", "image/jpeg", "application/json", "text/plain", "application/xml")


def _weighted(rng: random.Random, table) -> list:
    items = list(table.items()) if isinstance(table, dict) else list(table)
    names, weights = [n for n, _ in items], [w for _, w in items]
    return rng.choices(names, weights, k=4096)


class _Cycle:
    """Pre-drawn weighted choices, reused in a ring: cheap to draw, same distribution."""

    def __init__(self, rng: random.Random, table) -> None:
        self.items, self.i = _weighted(rng, table), 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


class RealisticWat:
    """Writes one WAT file record by record; every gzip member holds one WARC record, like CC's."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.kind = _Cycle(self.rng, IMG_KINDS)
        self.language = _Cycle(self.rng, LANGUAGE_WEIGHTS)
        self.other = _Cycle(self.rng, OTHER_LINKS)
        self.serial = 0
        self.sites = [self._site(i) for i in range(3000)]
        self.counts = {"records": 0, "html_pages": 0, "links": 0, "img_links": 0}

    def _site(self, i: int) -> dict:
        rng = self.rng
        tld = rng.choice(["com", "org", "de", "fr", "es", "ru", "jp", "net", "co.uk", "info"])
        host = f"{rng.choice(['www.', '', 'blog.', 'shop.'])}site{i}-{rng.choice(WORDS['en'])}.{tld}"
        cdn = rng.choice([host, f"cdn{i % 40}.cloudimages.net", f"static.site{i}.{tld}", f"i{i % 9}.wp.com"])
        lang = self.language()
        images = []
        for j in range(4):
            alt = rng.choice([f"{host} logo", self._text(lang), f"banner {j}", ""])
            images.append({"path": "IMG@/src", "url": f"/wp-content/uploads/2023/0{j + 1}/logo-{j}.png", "alt": alt})
        return {
            "host": host,
            "cdn": cdn,
            "https": rng.random() < 0.85,
            "lang": lang,
            "images": images,
            "base": rng.random() < 0.05,
        }

    def _text(self, language: str, low: int = 2, high: int = 10) -> str:
        words = WORDS[language]
        rng = self.rng
        sep = "" if language == "ja" else " "
        text = sep.join(rng.choice(words) for _ in range(rng.randint(low, high)))
        if rng.random() < 0.3:
            text += f" {rng.randint(1, 2024)}"
        return text

    def _img(self, site: dict) -> dict:  # noqa: C901 - the contender's per-link filter, kept as its source has it
        kind, rng = self.kind(), self.rng
        self.serial += 1
        lang = site["lang"] if rng.random() < 0.8 else self.language()
        name = f"{rng.choice(WORDS['en'])}-{self.serial}.{rng.choice(['jpg', 'jpg', 'jpeg', 'png', 'webp'])}"
        absolute = f"https://{site['cdn']}/images/{name}"
        link = {"path": "IMG@/src", "url": absolute, "alt": self._text(lang)}
        if kind == "no_alt":
            del link["alt"]
        elif kind == "empty_alt":
            link["alt"] = rng.choice(["", " ", "\n"])
        elif kind == "short_alt":
            link["alt"] = rng.choice(["logo", "img", "icon", "1", "pic"])
        elif kind == "lazy_data_url":
            link["url"] = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
        elif kind == "svg":
            link["url"] = f"/assets/icons/{name}.svg"
        elif kind == "gif":
            link["url"] = f"https://{site['cdn']}/img/spacer-{self.serial}.gif"
        elif kind == "site_image":
            return rng.choice(site["images"])
        elif kind == "javascript":
            link["url"] = "javascript:void(0)"
        elif kind == "ftp":
            link["url"] = f"ftp://ftp.{site['host']}/{name}"
        elif kind == "long_domain":
            link["url"] = f"https://{'x' * 70}.{site['host']}/{name}"
        elif kind == "root_relative":
            link["url"] = f"/wp-content/uploads/2024/05/{name}"
        elif kind == "relative":
            link["url"] = f"{rng.choice(['', '../', './'])}images/{name}"
        elif kind == "protocol_relative":
            link["url"] = f"//{site['cdn']}/images/{name}"
        elif kind == "messy_alt":
            link["alt"] = f"\n\t  {link['alt']}  \u00a0"
        elif kind == "camera_name":
            link["alt"] = f"IMG_{rng.randint(20100101, 20241231)}_{rng.randint(1000, 9999)}"
        elif kind == "huge_alt":
            link["alt"] = " ".join(self._text(lang) for _ in range(60))
        elif kind == "fragment":
            link["url"] += "#gallery"
        elif kind == "upper_scheme":
            link["url"] = f"HTTPS://{site['cdn'].upper()}/images/{name}"
        return link

    def _other_link(self, site: dict) -> dict:
        path, rng = self.other(), self.rng
        self.serial += 1
        slug = "-".join(rng.choice(WORDS["en"]) for _ in range(rng.randint(1, 5)))
        if path.startswith("A@/href"):
            url = rng.choice(
                [
                    f"/{slug}/",
                    f"https://{site['host']}/{slug}-{self.serial}.html",
                    f"https://www.{rng.choice(WORDS['en'])}{self.serial % 500}.com/",
                    "#",
                    f"?page={self.serial % 9}",
                ]
            )
            link = {"path": "A@/href", "url": url}
            if path.endswith("#title"):
                link["title"] = self._text(site["lang"], 1, 6)
            else:
                link["text"] = self._text(site["lang"], 1, 5)
            return link
        if path == "LINK@/href":
            return {
                "path": path,
                "url": f"/wp-content/themes/{slug}/style.css?ver=6.{self.serial % 9}",
                "rel": "stylesheet",
            }
        if path == "SCRIPT@/src":
            return {
                "path": path,
                "url": f"https://{site['cdn']}/js/{slug}.min.js?v={self.serial}",
                "type": "text/javascript",
            }
        if path == "FORM@/action":
            return {"path": path, "url": f"/{slug}/submit", "method": "post"}
        if path == "IMG@/data-src":
            return {"path": path, "url": f"https://{site['cdn']}/lazy/{slug}.jpg"}
        return {"path": path, "url": f"https://www.youtube.com/embed/{self.serial:011d}"}

    def _envelope(self, warc_type: str, url: str, payload: dict, length: int) -> dict:
        rng = self.rng
        self.serial += 1
        return {
            "Container": {
                "Filename": "CC-MAIN-20240518000000-20240518030000-00042.warc.gz",
                "Compressed": True,
                "Offset": str(rng.randrange(10**9)),
                "Gzip-Metadata": {
                    "Deflate-Length": str(length // 4),
                    "Header-Length": "10",
                    "Footer-Length": "8",
                    "Inflated-CRC": str(rng.getrandbits(31)),
                    "Inflated-Length": str(length),
                },
            },
            "Envelope": {
                "Format": "WARC",
                "WARC-Header-Length": str(400 + rng.randrange(200)),
                "Actual-Content-Length": str(length),
                "Block-Digest": f"sha1:{rng.getrandbits(160):040X}",
                "WARC-Header-Metadata": {
                    "WARC-Type": warc_type,
                    "WARC-Date": "2024-05-18T01:23:45Z",
                    "WARC-Record-ID": f"<urn:uuid:{rng.getrandbits(128):032x}>",
                    "Content-Length": str(length),
                    "Content-Type": f"application/http; msgtype={warc_type}",
                    "WARC-Warcinfo-ID": "<urn:uuid:8a3b6a64-0d1f-4b7e-9d0a-5e1b0b1f2c3d>",
                    "WARC-Concurrent-To": f"<urn:uuid:{rng.getrandbits(128):032x}>",
                    "WARC-IP-Address": ".".join(str(rng.randrange(256)) for _ in range(4)),
                    "WARC-Target-URI": url,
                    "WARC-Payload-Digest": f"sha1:{rng.getrandbits(160):040X}",
                    "WARC-Block-Digest": f"sha1:{rng.getrandbits(160):040X}",
                },
                "Payload-Metadata": payload,
            },
        }

    def _request(self, url: str, site: dict) -> dict:
        return {
            "Actual-Content-Type": "application/http; msgtype=request",
            "HTTP-Request-Metadata": {
                "Request-Message": {
                    "Method": "GET",
                    "Path": url.split(site["host"], 1)[-1] or "/",
                    "Version": "HTTP/1.1",
                },
                "Headers-Length": "320",
                "Entity-Length": "0",
                "Entity-Trailing-Slop-Length": "0",
                "Headers": {
                    "Host": site["host"],
                    "Accept-Encoding": "br,gzip",
                    "Accept-Language": "en-US,en;q=0.5",
                    "User-Agent": "CCBot/2.0 (https://commoncrawl.org/faq/)",
                    "Connection": "Keep-Alive",
                    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                },
            },
        }

    def _response(self, site: dict, page_url: str, html: bool) -> dict:
        rng = self.rng
        headers = {
            "Date": "Sat, 18 May 2024 01:23:45 GMT",
            "Server": rng.choice(["nginx", "Apache", "cloudflare"]),
            "Content-Type": "text/html; charset=UTF-8" if html else rng.choice(NON_HTML_TYPES),
            "X-Crawler-Content-Length": str(rng.randrange(2000, 400000)),
            "Vary": "Accept-Encoding",
            "Cache-Control": "max-age=600",
            "X-Crawler-Content-Encoding": "gzip",
        }
        response = {
            "Response-Message": {"Version": "HTTP/1.1", "Status": "200", "Reason": "OK"},
            "Headers-Length": "512",
            "Entity-Length": headers["X-Crawler-Content-Length"],
            "Entity-Trailing-Slop-Length": "0",
            "Entity-Digest": f"sha1:{rng.getrandbits(160):040X}",
            "Headers": headers,
        }
        payload = {"Actual-Content-Type": "application/http; msgtype=response", "HTTP-Response-Metadata": response}
        if not html:
            return payload
        # Tens of links per page (median ~45, long tail), about a quarter of them images.
        n_links = max(1, min(400, int(rng.lognormvariate(3.8, 0.7))))
        n_images = int(n_links * rng.uniform(0.1, 0.4))
        links = [self._other_link(site) for _ in range(n_links - n_images)]
        links += [self._img(site) for _ in range(n_images)]
        rng.shuffle(links)
        head = {
            "Title": self._text(site["lang"], 3, 12),
            "Metas": [
                {"name": "viewport", "content": "width=device-width, initial-scale=1"},
                {"name": "description", "content": self._text(site["lang"], 10, 30)},
                {"property": "og:title", "content": self._text(site["lang"], 3, 8)},
                {"name": "generator", "content": "WordPress 6.5.3"},
            ],
            "Link": [
                {
                    "path": "LINK@/href",
                    "url": f"https://{site['host']}/feed/",
                    "rel": "alternate",
                    "type": "application/rss+xml",
                }
            ],
            "Scripts": [
                {"path": "SCRIPT@/src", "url": f"https://{site['cdn']}/js/jquery.min.js", "type": "text/javascript"}
            ],
        }
        if site["base"]:
            head["Base"] = f"https://{site['cdn']}/"
        self.counts["html_pages"] += 1
        self.counts["links"] += len(links)
        self.counts["img_links"] += sum(1 for link in links if link["path"] == "IMG@/src")
        response["HTML-Metadata"] = {"Head": head, "Links": links}
        return payload

    def _metadata(self) -> dict:
        rng = self.rng
        lang = {"languages": [{"code": "en", "code-iso-639-3": "eng", "text-covered": 0.97}]}
        records = [
            {"Name": "fetchTimeMs", "Value": str(rng.randrange(20, 3000))},
            {"Name": "charset-detected", "Value": "UTF-8"},
            {"Name": "languages-cld2", "Value": json.dumps(lang)},
        ]
        return {
            "Actual-Content-Type": "application/warc-fields",
            "WARC-Metadata-Metadata": {"Metadata-Records": records},
        }

    def write(self, path: Path, megabytes: float) -> dict:
        import msgspec  # the generator runs in the project's environment only

        target = int(megabytes * 1e6)
        written, rng = 0, self.rng
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            written += out.write(
                _member(
                    b"WARC/1.0\r\nWARC-Type: warcinfo\r\nContent-Type: application/warc-fields\r\n",
                    b"software: cah candidates_bench\r\nformat: WARC File Format 1.0\r\n",
                )
            )
            while written < target:
                site = rng.choice(self.sites)
                scheme = "https" if site["https"] else "http"
                slug = "-".join(rng.choice(WORDS["en"]) for _ in range(rng.randint(1, 4)))
                url = (
                    f"{scheme}://{site['host']}/{rng.choice(['blog', 'shop', 'news', '2024/05'])}/{slug}-{self.serial}"
                )
                html = rng.random() < 0.6
                url += ".html" if html else rng.choice([".pdf", ".jpg", ".json", ".txt", ".xml"])
                for warc_type, payload in (
                    ("request", self._request(url, site)),
                    ("response", self._response(site, url, html)),
                    ("metadata", self._metadata()),
                ):
                    body = msgspec.json.encode(self._envelope(warc_type, url, payload, rng.randrange(1000, 400000)))
                    header = (
                        f"WARC/1.0\r\nWARC-Type: metadata\r\nWARC-Target-URI: {url}\r\n"
                        f"WARC-Date: 2024-05-18T01:23:45Z\r\nWARC-Record-ID: <urn:uuid:{rng.getrandbits(128):032x}>\r\n"
                        f"WARC-Refers-To: <urn:uuid:{rng.getrandbits(128):032x}>\r\n"
                        "Content-Type: application/json\r\n"
                    ).encode()
                    written += out.write(_member(header, body))
                    self.counts["records"] += 1
        os.replace(tmp, path)
        self.counts["bytes"] = written
        return self.counts


def _member(header: bytes, body: bytes) -> bytes:
    """One WARC record as its own gzip member (level 6, as Common Crawl's Java writer)."""
    record = header + f"Content-Length: {len(body)}\r\n\r\n".encode() + body + b"\r\n\r\n"
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(record) + compressor.flush()


def bench_file(megabytes: float, seed: int) -> tuple[Path, dict]:
    """The cached WAT file for (size, seed), written once; its facts beside it as JSON."""
    directory = WORK / "crawl" / "crawl-data" / CRAWL
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{CRAWL}-{megabytes:g}mb-seed{seed}.warc.wat.gz"
    facts = path.with_suffix(".json")
    if not (path.exists() and facts.exists()):
        started = time.perf_counter()
        print(f"generating {path.relative_to(REPO)} (once; cached) ...", flush=True)
        counts = RealisticWat(seed).write(path, megabytes)
        facts.write_text(json.dumps(counts))
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return path, json.loads(facts.read_text())


# ---------------------------------------------------------------------------------------------
# The contenders, each run in a fresh process pinned to one CPU
# ---------------------------------------------------------------------------------------------


def measure_ceiling(path: str) -> dict:
    import msgspec
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    decode = msgspec.json.Decoder().decode  # the project's JSON parser; orjson.loads measured the same
    started = clock()
    records = 0
    # Given a path, fastwarc reads the file natively: the fastest way it has.
    for record in ArchiveIterator(path, record_types=WarcRecordType.metadata, parse_http=False):
        decode(record.reader.read())
        records += 1
    return {"seconds": clock() - started, "records": records}


def measure_extraction(path: str) -> dict:
    from collections import Counter

    from cah_resources.candidates.image_links import CandidateFilters
    from cah_resources.candidates.stage import extract_pairs

    counts: Counter = Counter()
    started = clock()
    pairs = extract_pairs(path, CandidateFilters(), counts)
    seconds = clock() - started
    return {"seconds": seconds, "pairs": len(pairs), "counts": dict(counts)}


def measure_step(path: str) -> dict:
    """``extract_wat_file`` as a worker runs it (into a throwaway data root), then gcld3 alone."""
    import tempfile

    import pyarrow.compute as pc

    from cah_resources.candidates.language import LanguageDetector
    from cah_resources.candidates.stage import WatFileUnit, extract_wat_file, part_paths
    from cah_resources.crawl.common_crawl import CrawlSource
    from cah_resources.storage import DataRoot

    crawl_root = str(Path(path).parents[2])
    wat_path = os.path.relpath(path, crawl_root)
    with tempfile.TemporaryDirectory(prefix="cah-bench-") as tmp:
        root = DataRoot(tmp)
        unit = WatFileUnit("bench_00000", 0, wat_path, root, CrawlSource(base=crawl_root))
        started = clock()
        stats = extract_wat_file(unit)
        seconds = clock() - started
        table = root.read_parquet(part_paths(root, unit.segment, unit.position)[0])
    texts = pc.unique(table.column("text")).to_pylist()
    detector = LanguageDetector()
    detector.detect("warm up")
    began = clock()
    for text in texts:
        detector.detect(text)
    gcld3_seconds = clock() - began
    return {
        "seconds": seconds,
        "candidates": table.num_rows,
        "distinct_texts": len(texts),
        "language_calls": stats["language_calls"],
        "gcld3_seconds": gcld3_seconds,
    }


def measure_cc2dataset(path: str) -> dict:
    from importlib.metadata import version

    from cc2dataset.main import process_wat
    from loguru import logger

    logger.remove()  # its per-file log lines would only add noise to the figure
    started = clock()
    rows = sum(1 for _ in process_wat(path, "image"))
    return {"seconds": clock() - started, "rows": rows, "version": version("cc2dataset")}


def check_url_fast_path(path: Path) -> tuple[int, int]:
    """Every image link of the file resolved by the fast path and by urllib: the same answers.

    The extraction figure is only worth having if its URL shortcut changes no result.
    """
    from collections import Counter

    from cah_resources.candidates import image_links
    from cah_resources.candidates.wat import iter_pages

    links = fast = 0
    for page in iter_pages(str(path), Counter()):
        base = image_links.base_url_of(page.url, page.base_href)
        plain = image_links._plain_base(base)
        for src, _ in page.images:
            links += 1
            src = src.strip()
            if src.startswith(image_links._ABSOLUTE):
                quick = image_links._split_absolute(src)
            else:
                quick = plain and image_links._resolve_relative(src, plain)
            if quick:
                fast += 1
                general = image_links._resolve_any_url(src, base)
                if quick != general:
                    raise SystemExit(f"URL fast path disagrees with urllib: {src!r} on {base!r}: {quick} != {general}")
    return links, fast


MEASURES = {
    "ceiling": measure_ceiling,
    "extraction": measure_extraction,
    "step": measure_step,
    "cc2dataset": measure_cc2dataset,
}


def run_measured(contender: str, path: Path) -> dict:
    python = str(CC2DATASET_VENV / "bin" / "python") if contender == "cc2dataset" else sys.executable
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [python, __file__, "--measure", contender, str(path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{contender} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure_cc2dataset() -> None:
    """The reference in its own throwaway environment, so its pins never touch the project's."""
    python = CC2DATASET_VENV / "bin" / "python"
    probe = [str(python), "-c", "import cc2dataset.main"] if python.exists() else None
    if probe and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return
    print(f"installing {CC2DATASET} into {CC2DATASET_VENV.relative_to(REPO)} (once) ...", flush=True)
    subprocess.run(
        [
            "uv",
            "venv",
            "--quiet",
            "--python",
            f"{sys.version_info.major}.{sys.version_info.minor}",
            str(CC2DATASET_VENV),
        ],
        check=True,
    )
    subprocess.run(["uv", "pip", "install", "--quiet", "--python", str(python), CC2DATASET], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of the generated WAT file (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best of them counts (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cc2dataset", action="store_true", help="skip the reference (no PyPI access)")
    parser.add_argument("--measure", nargs=2, metavar=("CONTENDER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        contender, path = args.measure
        os.sched_setaffinity(0, {MEASURED_CPU})
        print(json.dumps(MEASURES[contender](path)))
        return

    path, facts = bench_file(args.mb, args.seed)
    contenders = [c for c in CONTENDERS if not (c == "cc2dataset" and args.no_cc2dataset)]
    if "cc2dataset" in contenders:
        ensure_cc2dataset()
    links, fast = check_url_fast_path(path)  # also brings the file into the page cache
    print(f"URL fast path: {fast:,} of {links:,} image links, each equal to urllib's resolution")
    megabytes = facts["bytes"] / 1e6
    print(
        f"WAT file: {megabytes:.1f} MB, {facts['records']:,} records, {facts['html_pages']:,} HTML pages "
        f"({facts['html_pages'] / facts['records']:.0%}), {facts['links']:,} links, "
        f"{facts['img_links']:,} IMG@/src; one core (CPU {MEASURED_CPU}), best of {args.repeats}, interleaved",
        flush=True,
    )
    best: dict[str, dict] = {}
    for round_ in range(args.repeats):
        for contender in contenders:
            result = run_measured(contender, path)
            if contender not in best or result["seconds"] < best[contender]["seconds"]:
                best[contender] = result
            print(f"  round {round_ + 1}: {contender:<17} {megabytes / result['seconds']:7.1f} MB/s", flush=True)
    report(best, megabytes)


def report(best: dict[str, dict], megabytes: float) -> None:
    rate = {name: megabytes / result["seconds"] for name, result in best.items()}
    print()
    for name in CONTENDERS:
        if name in rate:
            label = LABELS[name].format(version=best[name].get("version", ""))
            print(f"{label:<60} {rate[name]:7.1f} MB/s")
    step = best["step"]
    gcld3_rate = step["distinct_texts"] / step["gcld3_seconds"]
    print(f"{'gcld3 alone, over the step’s distinct texts':<60} {gcld3_rate:7.0f} calls/s")
    print()
    print(f"extraction / ceiling        {rate['extraction'] / rate['ceiling']:.2f}   (target >= 0.70)")
    if "cc2dataset" in rate:
        print(f"extraction / cc2dataset     {rate['extraction'] / rate['cc2dataset']:.2f}   (target >= 2.00)")
        print(f"step / cc2dataset           {rate['step'] / rate['cc2dataset']:.2f}")
    print(
        f"gcld3 share of the step     {step['gcld3_seconds'] / step['seconds']:.0%}   "
        f"({step['language_calls']:,} calls for {step['candidates']:,} candidates)"
    )
    once = step["language_calls"] == step["distinct_texts"]
    print(
        f"gcld3 once per distinct candidate text: {'yes' if once else 'NO'} "
        f"({step['language_calls']:,} calls, {step['distinct_texts']:,} distinct texts)"
    )
    extraction = best["extraction"]
    print(
        f"extraction kept {extraction['pairs']:,} pairs; "
        + ", ".join(f"{k}={v:,}" for k, v in sorted(extraction["counts"].items()) if k.startswith("drop_"))
    )
    if "cc2dataset" in best:
        print(f"cc2dataset yielded {best['cc2dataset']['rows']:,} rows (no filters or dedup of its own per file)")


if __name__ == "__main__":
    main()
