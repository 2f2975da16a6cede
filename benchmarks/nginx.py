"""nginx as a reverse proxy in front of a model server: the floor of what one proxy hop costs,
measured the same way as the control plane's (CPU time of its processes per forwarded request)."""

import shutil
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.processes import Server, free_port

CONFIG = """worker_processes 1;
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
  upstream model {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def available() -> bool:
    return shutil.which("nginx") is not None


def nginx_in_front_of(upstream_url: str, work: Path) -> tuple[Server, str]:
    """A Server running nginx that forwards everything to `upstream_url`'s host and port, and the
    URL of the same path through it."""
    target = urlsplit(upstream_url)
    directory = work / "nginx"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(CONFIG.format(work=directory, upstream=target.netloc, port=port))
    server = Server("nginx", [shutil.which("nginx") or "nginx", "-c", str(config), "-p", str(directory)],
                    f"http://127.0.0.1:{port}/health", log_path=directory / "nginx.log")
    return server, f"http://127.0.0.1:{port}{target.path}"
