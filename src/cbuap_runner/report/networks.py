"""Which network a run's record says it attacked, and whether two records attacked the same one.

A record names its network three ways: the model's digest (its weights key: dataset, architecture, training and
seed; a model source's identity where it has none), its weights (the hash of the state dict in records of newer
code; the model file's sha256 where the network came from a file) and its data (the fingerprint of the images). A
network trained again under the same key (on another machine, after its file was lost) has the digest of the first
but other weights: only the weights tell the two apart. Two runs used the same weights when their state-dict hashes
agree. Where either record predates that hash, one model file is one network; two files are not proof of two
networks (a file records the code and the time that trained it, so the same weights trained twice make two files),
but a different clean accuracy on the same test images (the same count, drawn with the same seed) is: such runs
count as different weights, and so do runs that name no file at all (records older than model provenance) when
their clean accuracies differ that way. Runs whose files differ while nothing tells them apart count as one network
that was not proven one (`unproven`), which a report says. Each key is compared only where both records name it (a
run that failed before it loaded its model names none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .records import hashable, location


@dataclass(frozen=True)
class NetworkKeys:
    """What names the network and data of one run (None where the record does not say)."""

    network: str | None
    weights: str | None
    file: str | None  # an ensemble's files as one string (records.hashable)
    data: str | None
    clean_acc: float | None
    clean_on: str | None  # the test images the clean accuracy was measured on: their count and the seed drawing them


def network_keys(record: Mapping[str, Any]) -> NetworkKeys:
    """The keys `record`'s provenance names."""
    provenance = record.get("provenance") or {}
    model = provenance.get("model") or {}
    metrics = record.get("metrics") or {}
    file = model.get("sha256")
    return NetworkKeys(network=model.get("digest") or model.get("identity"), weights=model.get("weights_fingerprint"),
                       file=None if file is None else hashable(file),
                       data=(provenance.get("data") or {}).get("fingerprint"), clean_acc=metrics.get("clean_acc"),
                       clean_on=hashable([metrics.get("num_images"), record.get("seed")]))


def _differ(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a != b


def _told_apart(a: NetworkKeys, b: NetworkKeys) -> bool:
    """Whether two runs of unhashed weights, not known to have read one file, measured different clean accuracies
    on the same test images."""
    one_file = a.file is not None and a.file == b.file
    return not one_file and a.clean_on == b.clean_on and _differ(a.clean_acc, b.clean_acc)


def difference(a: NetworkKeys, b: NetworkKeys) -> str | None:
    """The first of 'network', 'weights' and 'data' in which two runs differ, else None."""
    if _differ(a.network, b.network):
        return "network"
    if a.weights and b.weights:
        if a.weights != b.weights:
            return "weights"
    elif _told_apart(a, b):
        return "weights"
    if _differ(a.data, b.data):
        return "data"
    return None


def first_mismatch(records: Sequence[Mapping[str, Any]]) -> tuple[str, Mapping[str, Any], Mapping[str, Any]] | None:
    """(what differs, one run, another) for two of `records` that used different networks, weights or data; None
    when they all agree."""
    distinct: dict[NetworkKeys, Mapping[str, Any]] = {}
    for record in records:
        distinct.setdefault(network_keys(record), record)
    found = list(distinct.items())
    for i, (keys, record) in enumerate(found):
        for other_keys, other in found[i + 1:]:
            what = difference(keys, other_keys)
            if what:
                return what, record, other
    return None


def unproven(records: Sequence[Mapping[str, Any]]) -> str:
    """'' when every completed run that read a model file hashed its weights, or all read one file; else a sentence
    saying which files they read and what, short of a proof, makes them one network."""
    files: dict[str, list[tuple[Mapping[str, Any], NetworkKeys]]] = {}
    for record in records:
        keys = network_keys(record)
        if keys.file and record.get("status") == "completed":
            files.setdefault(keys.file, []).append((record, keys))
    runs = [keys for group in files.values() for _, keys in group]
    if len(files) < 2 or all(keys.weights for keys in runs):
        return ""
    accuracy = sorted({keys.clean_acc for keys in runs} - {None})
    missing = sum(keys.clean_acc is None for keys in runs)
    read = "; ".join(f"{len(group)} from {file.strip(chr(34))[:12]}… (first {location(group[0][0])})"
                     for file, group in files.items())
    measured = ", ".join(f"{a:.4f}" for a in accuracy) or "none measured"
    return (f"The runs read {len(files)} model files of one weights key whose weights were not all hashed ({read}); "
            f"they count as one network because nothing in the records tells them apart (clean accuracy: {measured}"
            f"{f'; {missing} runs measured none' if missing and accuracy else ''}), which is not a proof.")


def check_groups(groups: Mapping[str, Sequence[Mapping[str, Any]]], why: str) -> None:
    """ValueError naming two runs of one group (its key says which) that used different networks, weights or data;
    `why` ends the message."""
    for label, group in groups.items():
        mismatch = first_mismatch(group)
        if mismatch:
            what, one, other = mismatch
            raise ValueError(f"{label}: {location(one)} and {location(other)} used different {what}; {why}")


def check_paired_networks(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    """ValueError when, for a seed both table rows hold, their runs attacked different networks, weights or data: a
    paired difference compares two attacks on one network, seed by seed."""
    by_seed: dict[str, list[Mapping[str, Any]]] = {}
    for row in (a, b):
        for record in row.get("_records", ()):
            if record.get("seed") is not None:
                by_seed.setdefault(f"seed {hashable(record['seed'])}", []).append(record)
    check_groups(dict(sorted(by_seed.items())), "a paired difference compares attacks on one network (run them "
                                                "again on one)")
