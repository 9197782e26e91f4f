"""A Hetzner Cloud API twin on loopback: the endpoints hcloud-python uses for servers, with faults on demand."""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCATIONS = [
    {
        "id": 1,
        "name": "fsn1",
        "description": "Falkenstein DC Park 1",
        "country": "DE",
        "city": "Falkenstein",
        "latitude": 50.47612,
        "longitude": 12.370071,
        "network_zone": "eu-central",
    },
    {
        "id": 2,
        "name": "nbg1",
        "description": "Nuremberg DC Park 1",
        "country": "DE",
        "city": "Nuremberg",
        "latitude": 49.452102,
        "longitude": 11.076665,
        "network_zone": "eu-central",
    },
    {
        "id": 3,
        "name": "hel1",
        "description": "Helsinki DC Park 1",
        "country": "FI",
        "city": "Helsinki",
        "latitude": 60.169855,
        "longitude": 24.938379,
        "network_zone": "eu-central",
    },
]
# name: (cores, memory GB, disk GB, EUR net per hour, locations)
SERVER_TYPES = {
    "cx22": (2, 4.0, 40, "0.0060", ("fsn1", "nbg1", "hel1")),
    "cpx31": (4, 8.0, 160, "0.0238", ("fsn1", "nbg1", "hel1")),
    "ccx63": (48, 192.0, 960, "0.5955", ("fsn1", "nbg1")),
}
VAT = 1.19
IMAGES = [
    {
        "id": 161547269,
        "name": "ubuntu-24.04",
        "type": "system",
        "status": "available",
        "description": "Ubuntu 24.04",
        "image_size": None,
        "disk_size": 5,
        "created": "2024-04-25T13:27:04+00:00",
        "created_from": None,
        "bound_to": None,
        "os_flavor": "ubuntu",
        "os_version": "24.04",
        "rapid_deploy": True,
        "protection": {"delete": False},
        "deprecated": None,
        "deleted": None,
        "labels": {},
        "architecture": "x86",
    },
]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def server_type_json(type_id: int, name: str) -> dict:
    cores, memory, disk, net, locations = SERVER_TYPES[name]
    gross = f"{float(net) * VAT:.10f}"
    return {
        "id": type_id,
        "name": name,
        "description": name.upper(),
        "category": "shared",
        "cores": cores,
        "memory": memory,
        "disk": disk,
        "deprecated": False,
        "deprecation": None,
        "storage_type": "local",
        "cpu_type": "shared",
        "architecture": "x86",
        "included_traffic": 21990232555520,
        "prices": [
            {
                "location": loc,
                "price_hourly": {"net": net, "gross": gross},
                "price_monthly": {"net": f"{float(net) * 730:.4f}", "gross": f"{float(gross) * 730:.4f}"},
                "included_traffic": 21990232555520,
                "price_per_tb_traffic": {"net": "1.0000", "gross": "1.1900"},
            }
            for loc in locations
        ],
        "locations": [
            {
                "id": next(x["id"] for x in LOCATIONS if x["name"] == loc),
                "name": loc,
                "deprecation": None,
                "available": True,
                "recommended": True,
            }
            for loc in locations
        ],
    }


TYPES = [server_type_json(i + 1, name) for i, name in enumerate(SERVER_TYPES)]


@dataclass
class Fault:
    """Answer the next ``times`` requests matching ``method`` and ``path`` with this error."""

    method: str
    path: str
    status: int
    code: str
    message: str
    times: int = 1


@dataclass
class Project:
    """One Hetzner project: its token, its servers and its server limit."""

    token: str
    server_limit: int = 25
    servers: dict[int, dict] = field(default_factory=dict)
    ssh_keys: list[dict] = field(default_factory=list)


class FakeHetznerCloud:
    """Serves /v1 on 127.0.0.1; ``endpoint`` goes to ``hcloud.Client(api_endpoint=...)``."""

    def __init__(self) -> None:
        self.projects: dict[str, Project] = {}
        self.actions: dict[int, dict] = {}
        self.faults: list[Fault] = []
        self.requests: list[dict] = []  # method, path, query, body, project token
        self.lock = threading.Lock()
        self._ids = itertools.count(1000)
        self._ips = itertools.count(10)
        self.actions_finish_after_polls = 1
        self.failing_creates: set[str] = set()  # server names whose create action ends in error
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeHetznerCloud:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- test-side controls -------------------------------------------------------------------
    def add_project(self, token: str, server_limit: int = 25, ssh_keys: tuple[str, ...] = ()) -> Project:
        project = Project(token, server_limit)
        for name in ssh_keys:
            project.ssh_keys.append(
                {
                    "id": next(self._ids),
                    "name": name,
                    "fingerprint": "b7:2f:30:a0:2f:6c:58:6c",
                    "public_key": f"ssh-ed25519 AAAA {name}",
                    "labels": {},
                    "created": _now(),
                }
            )
        self.projects[token] = project
        return project

    def add_server(self, token: str, name: str, labels: dict | None = None, server_type: str = "cx22") -> dict:
        """A server made outside the fleet (by hand, by another tool)."""
        with self.lock:
            server = self._make_server(name, server_type, "fsn1", "ubuntu-24.04", labels or {}, status="running")
            self.projects[token].servers[server["id"]] = server
            return server

    def fail_next(self, method: str, path: str, status: int, code: str, message: str, times: int = 1) -> None:
        self.faults.append(Fault(method, path, status, code, message, times))

    def calls(self, method: str, path_prefix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(path_prefix)]

    # --- model --------------------------------------------------------------------------------
    def _make_server(self, name, server_type, location, image, labels, status="initializing") -> dict:
        sid = next(self._ids)
        n = next(self._ips)
        type_json = next(t for t in TYPES if t["name"] == server_type)
        return {
            "id": sid,
            "name": name,
            "status": status,
            "created": _now(),
            "public_net": {
                "ipv4": {
                    "id": sid + 1,
                    "ip": f"203.0.113.{n % 250}",
                    "blocked": False,
                    "dns_ptr": f"static.{n}.example",
                },
                "ipv6": {"id": sid + 2, "ip": f"2001:db8:{n:x}::/64", "blocked": False, "dns_ptr": []},
                "floating_ips": [],
                "firewalls": [],
            },
            "private_net": [],
            "server_type": type_json,
            "datacenter": None,
            "location": next(x for x in LOCATIONS if x["name"] == location),
            "image": next(i for i in IMAGES if i["name"] == image),
            "iso": None,
            "rescue_enabled": False,
            "locked": False,
            "backup_window": None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "protection": {"delete": False, "rebuild": False},
            "labels": dict(labels),
            "volumes": [],
            "load_balancers": [],
            "primary_disk_size": type_json["disk"],
            "placement_group": None,
        }

    def _action(self, command: str, resource_id: int, on_finish=None) -> dict:
        action = {
            "id": next(self._ids),
            "command": command,
            "status": "running",
            "progress": 0,
            "started": _now(),
            "finished": None,
            "resources": [{"id": resource_id, "type": "server"}],
            "error": None,
            "_polls": 0,
            "_on_finish": on_finish,
        }
        self.actions[action["id"]] = action
        return action

    @staticmethod
    def _public(obj: dict) -> dict:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    # --- HTTP ---------------------------------------------------------------------------------
    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status: int, payload: dict | None) -> None:
                body = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, code: str, message: str) -> None:
                self._reply(status, {"error": {"code": code, "message": message, "details": {}}})

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                path = url.path.removeprefix("/v1")
                query = {k: v for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                with fake.lock:
                    fake.requests.append({"method": method, "path": path, "query": query, "body": body, "token": token})
                    project = fake.projects.get(token)
                    if project is None:
                        return self._error(401, "unauthorized", "unable to authenticate")
                    for fault in fake.faults:
                        if fault.times > 0 and fault.method == method and path.startswith(fault.path):
                            fault.times -= 1
                            return self._error(fault.status, fault.code, fault.message)
                    status, payload = fake._route(project, method, path, query, body)
                if status >= 400:
                    return self._error(status, payload["code"], payload["message"])
                self._reply(status, payload)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        return Handler

    def _route(self, project: Project, method: str, path: str, query: dict, body: dict | None):  # noqa: C901 - the fake API's route table
        one = lambda key: (query.get(key) or [None])[0]
        if method == "GET" and path == "/server_types":
            return 200, self._page("server_types", [t for t in TYPES if one("name") in (None, t["name"])], query)
        if method == "GET" and path == "/locations":
            return 200, self._page("locations", [x for x in LOCATIONS if one("name") in (None, x["name"])], query)
        if method == "GET" and path == "/images":
            arch = query.get("architecture")
            found = [i for i in IMAGES if one("name") in (None, i["name"]) and (not arch or i["architecture"] in arch)]
            return 200, self._page("images", found, query)
        if method == "GET" and path == "/ssh_keys":
            return 200, self._page("ssh_keys", [k for k in project.ssh_keys if one("name") in (None, k["name"])], query)
        if method == "GET" and path == "/servers":
            found = [
                s
                for s in project.servers.values()
                if one("name") in (None, s["name"]) and matches_selector(s["labels"], one("label_selector"))
            ]
            return 200, self._page("servers", sorted(found, key=lambda s: s["id"]), query)
        if method == "POST" and path == "/servers":
            return self._create_server(project, body or {})
        m = re.fullmatch(r"/servers/(\d+)", path)
        if m:
            server = project.servers.get(int(m.group(1)))
            if server is None:
                return 404, {"code": "not_found", "message": "server not found"}
            if method == "GET":
                return 200, {"server": self._public(server)}
            if method == "DELETE":
                server["status"] = "deleting"
                action = self._action("delete_server", server["id"], lambda: project.servers.pop(server["id"], None))
                return 200, {"action": self._public(action)}
        m = re.fullmatch(r"/actions/(\d+)", path)
        if m and method == "GET":
            action = self.actions.get(int(m.group(1)))
            if action is None:
                return 404, {"code": "not_found", "message": "action not found"}
            action["_polls"] += 1
            if action["status"] == "running" and action["_polls"] >= self.actions_finish_after_polls:
                if action.get("_fails"):
                    action.update(
                        status="error",
                        finished=_now(),
                        error={"code": "server_create_failed", "message": "could not create server"},
                    )
                else:
                    action.update(status="success", progress=100, finished=_now())
                    if action["_on_finish"]:
                        action["_on_finish"]()
            return 200, {"action": self._public(action)}
        return 404, {"code": "not_found", "message": f"no route {method} {path}"}

    def _create_server(self, project: Project, body: dict):
        name, type_name = body.get("name"), body.get("server_type")
        location, image = body.get("location", "fsn1"), body.get("image")
        if not name or not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name):
            return 400, {"code": "invalid_input", "message": f"invalid server name {name!r}"}
        if type_name not in SERVER_TYPES:
            return 400, {"code": "invalid_input", "message": f"server type {type_name!r} not found"}
        if location not in {x["name"] for x in LOCATIONS}:
            return 400, {"code": "invalid_input", "message": f"location {location!r} not found"}
        if image not in {i["name"] for i in IMAGES}:
            return 400, {"code": "invalid_input", "message": f"image {image!r} not found"}
        for key in body.get("ssh_keys") or []:
            if key not in {k["name"] for k in project.ssh_keys} | {k["id"] for k in project.ssh_keys}:
                return 400, {"code": "invalid_input", "message": f"ssh key {key!r} not found"}
        if any(s["name"] == name for s in project.servers.values()):
            return 409, {"code": "uniqueness_error", "message": "server name is already used"}
        if len(project.servers) >= project.server_limit:
            return 403, {"code": "resource_limit_exceeded", "message": "server limit exceeded"}
        server = self._make_server(name, type_name, location, image, body.get("labels") or {})
        server["_user_data"] = body.get("user_data")
        project.servers[server["id"]] = server

        def started():
            server["status"] = "running"

        action = self._action("create_server", server["id"], started)
        action["_fails"] = name in self.failing_creates
        return 201, {
            "server": self._public(server),
            "action": self._public(action),
            "next_actions": [],
            "root_password": None,
        }

    def _page(self, key: str, items: list[dict], query: dict) -> dict:
        page = int((query.get("page") or ["1"])[0])
        per_page = int((query.get("per_page") or ["25"])[0])
        last = max(1, -(-len(items) // per_page))
        chunk = [self._public(i) for i in items[(page - 1) * per_page : page * per_page]]
        return {
            key: chunk,
            "meta": {
                "pagination": {
                    "page": page,
                    "per_page": per_page,
                    "previous_page": page - 1 or None,
                    "next_page": page + 1 if page < last else None,
                    "last_page": last,
                    "total_entries": len(items),
                }
            },
        }


def matches_selector(labels: dict, selector: str | None) -> bool:
    """Hetzner's label selector: ``k=v``, ``k!=v``, ``k`` and ``!k``, comma-separated, all must hold."""
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if "!=" in term:
            k, v = term.split("!=", 1)
            ok = labels.get(k) != v
        elif "==" in term or "=" in term:
            k, v = re.split(r"==?", term, maxsplit=1)
            ok = labels.get(k) == v
        elif term.startswith("!"):
            ok = term[1:] not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True
