"""What one measurement is: the load applied, to which server and model, and what came back."""

from dataclasses import dataclass

from benchmarks.load import LoadResult


@dataclass(frozen=True)
class Load:
    """Which rows each request carries, how many connections, for how long."""

    name: str
    rows: int
    connections: int
    seconds: float


@dataclass(frozen=True)
class Measurement:
    pass_number: int
    model: str
    server: str
    load: Load
    result: LoadResult
    startup_seconds: float | None
    rss_mib: float | None
    # Control-plane runs: "direct", "proxied" or "nginx", and the API's settings (workers, environment).
    route: str | None = None
    variant: str | None = None
    # The proxy hop's CPU time (the API's, or nginx's) per request of this load, in microseconds.
    hop_cpu_us: float | None = None
