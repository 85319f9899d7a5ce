"""The server's counters and gauges, written by the scheduler's thread and read as Prometheus text by `GET /metrics`.

Prometheus' text format (version 0.0.4): `# HELP` and `# TYPE` lines, then `name{labels} value`. Time to first
token is a histogram (cumulative `_bucket{le=...}`, `_sum`, `_count`), so a dashboard can read percentiles;
tokens per second is the rate over the last `WINDOW_S` seconds, for a glance without a Prometheus server.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WINDOW_S = 10.0


class Metrics:
    """Thread-safe counters; `render()` gives the `/metrics` body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = collections.Counter()  # by outcome: ok, error, cancelled
        self.submitted_total = 0
        self.prompt_tokens_total = 0
        self.generated_total = 0
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)  # the last bucket is +Inf
        self.ttft_sum = 0.0
        self.queue_depth = self.running_slots = self.slots = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens) in the window

    def submitted(self) -> None:
        with self._lock:
            self.submitted_total += 1

    def finished(self, outcome: str) -> None:
        with self._lock:
            self.requests[outcome] += 1

    def prompt_tokens(self, n: int) -> None:
        with self._lock:
            self.prompt_tokens_total += n

    def generated(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.generated_total += n
            self._recent.append((now, n))
            while self._recent and self._recent[0][0] < now - WINDOW_S:
                self._recent.popleft()

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft_counts[bisect.bisect_left(TTFT_BUCKETS, seconds)] += 1
            self.ttft_sum += seconds

    def gauges(self, queue_depth: int, running_slots: int, slots: int) -> None:
        self.queue_depth, self.running_slots, self.slots = queue_depth, running_slots, slots

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [n for t, n in self._recent if t >= now - WINDOW_S]
        return sum(recent) / WINDOW_S

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP lmforge_requests_submitted_total Requests accepted into the queue.",
                "# TYPE lmforge_requests_submitted_total counter",
                f"lmforge_requests_submitted_total {self.submitted_total}",
                "# HELP lmforge_requests_total Requests that left the server, by outcome.",
                "# TYPE lmforge_requests_total counter",
                *(f'lmforge_requests_total{{outcome="{k}"}} {self.requests[k]}' for k in ("ok", "error", "cancelled")),
                "# HELP lmforge_prompt_tokens_total Prompt tokens prefilled.",
                "# TYPE lmforge_prompt_tokens_total counter",
                f"lmforge_prompt_tokens_total {self.prompt_tokens_total}",
                "# HELP lmforge_generation_tokens_total Tokens sampled.",
                "# TYPE lmforge_generation_tokens_total counter",
                f"lmforge_generation_tokens_total {self.generated_total}",
                "# HELP lmforge_queue_depth Requests waiting for a slot.",
                "# TYPE lmforge_queue_depth gauge",
                f"lmforge_queue_depth {self.queue_depth}",
                "# HELP lmforge_slots_running KV cache slots in use (running samples).",
                "# TYPE lmforge_slots_running gauge",
                f"lmforge_slots_running {self.running_slots}",
                "# HELP lmforge_slots_total KV cache slots.",
                "# TYPE lmforge_slots_total gauge",
                f"lmforge_slots_total {self.slots}",
                "# HELP lmforge_time_to_first_token_seconds From submission to the first sampled token.",
                "# TYPE lmforge_time_to_first_token_seconds histogram",
            ]
            cumulative = 0
            for bound, count in zip((*map(str, TTFT_BUCKETS), "+Inf"), self.ttft_counts):
                cumulative += count
                lines.append(f'lmforge_time_to_first_token_seconds_bucket{{le="{bound}"}} {cumulative}')
            lines += [f"lmforge_time_to_first_token_seconds_sum {self.ttft_sum:.6f}",
                      f"lmforge_time_to_first_token_seconds_count {cumulative}"]
        lines += ["# HELP lmforge_tokens_per_second Tokens sampled per second over the last 10 seconds.",
                  "# TYPE lmforge_tokens_per_second gauge",
                  f"lmforge_tokens_per_second {self.tokens_per_second():.3f}"]
        return "\n".join(lines) + "\n"
