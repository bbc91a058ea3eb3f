"""DNA readers: labelled sequences from CSV (`seq,label`) and genomes from FASTA (plain or gzip)."""

from __future__ import annotations

import csv
import gzip
import sys
from dataclasses import dataclass
from pathlib import Path

# IUPAC nucleotide codes: A C G T, N (any) and the two- and three-base ambiguity codes. The tokenizer maps the
# ambiguity codes to N; letters outside this set mark a row as corrupt.
IUPAC = frozenset("ACGTNRYSWKMBDHVU")


@dataclass
class SeqTable:
    """Sequences (upper case) with their labels as written in the file; `skipped` counts rejected rows."""

    seqs: list[str]
    labels: list[str]
    skipped: int = 0


def _open_text(path: Path):
    """Open a text file, gunzipping it when it starts with the gzip magic bytes (whatever its suffix)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_seq_csv(
    path: str | Path, seq_column: str = "seq", label_column: str = "label", alphabet: frozenset[str] = IUPAC,
    quiet: bool = False,
) -> SeqTable:
    """Read a CSV with a header holding `seq_column` and `label_column` (other columns are ignored).

    Rows whose sequence is empty or holds letters outside `alphabet` (case-insensitive), or whose label is empty,
    are skipped and counted on stderr. Raises ValueError for a missing or empty file, a header without the two
    columns, or a file without a single usable row.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV file {path} does not exist")
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        if not header:
            raise ValueError(f"CSV file {path} is empty (expected a header with columns {seq_column},{label_column})")
        header = [h.strip() for h in header]
        missing = [c for c in (seq_column, label_column) if c not in header]
        if missing:
            raise ValueError(
                f"CSV file {path} has columns {','.join(header)}; expected columns {seq_column},{label_column} "
                f"(missing: {','.join(missing)})"
            )
        reader.fieldnames = header
        seqs, labels, skipped, first_bad = [], [], 0, None
        for line, row in enumerate(reader, start=2):
            seq = (row.get(seq_column) or "").strip().upper()
            label = (row.get(label_column) or "").strip()
            if not seq or not label or not set(seq) <= alphabet:
                skipped += 1
                first_bad = first_bad or f"line {line}: {seq[:30]!r}, label {label!r}"
                continue
            seqs.append(seq)
            labels.append(label)
    if skipped and not quiet:
        print(
            f"skipped {skipped} of {skipped + len(seqs)} rows of {path} (empty, or letters outside "
            f"{''.join(sorted(alphabet))}), first at {first_bad}",
            file=sys.stderr,
        )
    if not seqs:
        raise ValueError(f"CSV file {path} holds no usable rows")
    return SeqTable(seqs, labels, skipped)


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """Read a FASTA (plain or gzip) file: a list of (header, sequence) records, sequences upper case without
    whitespace. Text before the first `>` is treated as one unnamed record. Raises ValueError when the file is
    missing or holds no sequence letters."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"FASTA file {path} does not exist")
    records: list[tuple[str, list[str]]] = []
    with _open_text(path) as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith(";"):
                continue
            if line.startswith(">"):
                records.append((line[1:].strip(), []))
            else:
                if not records:
                    records.append(("", []))
                records[-1][1].append("".join(line.split()).upper())
    out = [(name, "".join(parts)) for name, parts in records]
    out = [(name, seq) for name, seq in out if seq]
    if not out:
        raise ValueError(f"FASTA file {path} holds no sequence")
    return out
