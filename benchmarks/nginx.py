"""nginx as a reverse proxy in front of a model server: the floor of what one proxy hop costs,
measured the same way as the control plane's (CPU time of its processes per forwarded request)."""

import shutil
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.processes import Server, free_port

FRAME = """worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  keepalive_requests 1000000;
  {servers}
}}
"""
PROXY = """upstream model {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}"""


def nginx_server(name: str, servers: str, directory: Path, ready_url: str) -> Server:
    """A Server running one nginx worker with these `server` blocks (and their upstreams)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "nginx.conf"
    config.write_text(FRAME.format(work=directory, servers=servers))
    return Server(name, [shutil.which("nginx") or "nginx", "-c", str(config), "-p", str(directory)], ready_url,
                  log_path=directory / "nginx.log")


def proxy_servers(upstream: str, port: int) -> str:
    """nginx's keep-alive reverse proxy on `port` to `upstream` (host:port)."""
    return PROXY.format(upstream=upstream, port=port)


def available() -> bool:
    return shutil.which("nginx") is not None


def nginx_in_front_of(upstream_url: str, work: Path) -> tuple[Server, str]:
    """A Server running nginx that forwards everything to `upstream_url`'s host and port, and the
    URL of the same path through it."""
    target = urlsplit(upstream_url)
    port = free_port()
    server = nginx_server("nginx", proxy_servers(target.netloc, port), work / "nginx", f"http://127.0.0.1:{port}/health")
    return server, f"http://127.0.0.1:{port}{target.path}"
