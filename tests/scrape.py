"""Reading Prometheus text as a scraper does: samples by name and labels."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, frozenset[tuple[str, str]]]


class Samples:
    """Every sample of one exposition."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        """The value of the sample name{labels}; AssertionError naming what there is if none."""
        key = (name, frozenset(labels.items()))
        if key not in self.values:
            known = sorted(repr(dict(k[1])) for k in self.values if k[0] == name)
            raise AssertionError(f"no sample {name}{labels}; {name} has {known}")
        return self.values[key]

    def find(self, name: str, **labels: str) -> float | None:
        """The value of the sample name{labels}, None when there is none (yet)."""
        return self.values.get((name, frozenset(labels.items())))

    def labels(self, name: str, label: str) -> set[str]:
        """Every value the label takes in samples of name."""
        return {dict(k[1])[label] for k in self.values if k[0] == name and label in dict(k[1])}


def scrape(address: tuple[str, int]) -> Samples:
    """GET /metrics from a worker's endpoint."""
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        assert 200 == response.status
        return Samples(response.read().decode())
