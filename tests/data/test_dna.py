"""DNA readers: CSV tables (header checks, rows with bad letters) and FASTA files, plain and gzip."""

import gzip

import pytest

from seqbackbone.data import read_fasta, read_seq_csv


def test_csv_reads_rows_and_ignores_extra_columns(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("id,seq,label\n1,acgtn,EI\n2,GGGCCCAATT,N\n3,ACGRYT,IE\n")
    table = read_seq_csv(p)
    assert table.seqs == ["ACGTN", "GGGCCCAATT", "ACGRYT"]  # IUPAC ambiguity codes are kept
    assert table.labels == ["EI", "N", "IE"] and table.skipped == 0


def test_csv_skips_bad_rows_and_counts_them(tmp_path, capsys):
    p = tmp_path / "t.csv"
    p.write_text("seq,label\nACGT,1\nAC9T,0\n,1\nACXQ,0\nTTTT,\nGGGG,0\n")
    table = read_seq_csv(p)
    assert table.seqs == ["ACGT", "GGGG"] and table.labels == ["1", "0"]
    assert table.skipped == 4
    err = capsys.readouterr().err
    assert "skipped 4 of 6 rows" in err and "line 3" in err


def test_csv_header_errors(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("sequence,class\nACGT,1\n")
    with pytest.raises(ValueError, match=r"expected columns seq,label \(missing: seq,label\)"):
        read_seq_csv(p)
    p.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_seq_csv(p)
    p.write_text("seq,label\n")
    with pytest.raises(ValueError, match="no usable rows"):
        read_seq_csv(p)
    with pytest.raises(ValueError, match="does not exist"):
        read_seq_csv(tmp_path / "missing.csv")


@pytest.mark.parametrize("compress", [False, True])
def test_fasta_records_plain_and_gzip(tmp_path, compress):
    text = ">chr1 first\nACGT\nacgtNN\n\n>chr2\nGGG\n>empty\n>chr3\nT T\n"
    p = tmp_path / ("g.fa.gz" if compress else "g.fa")
    if compress:
        with gzip.open(p, "wt") as fh:
            fh.write(text)
    else:
        p.write_text(text)
    records = read_fasta(p)
    assert records == [("chr1 first", "ACGTACGTNN"), ("chr2", "GGG"), ("chr3", "TT")]


def test_fasta_without_header_and_errors(tmp_path):
    p = tmp_path / "raw.txt"
    p.write_text("ACGT\nTTTT\n")
    assert read_fasta(p) == [("", "ACGTTTTT")]
    p.write_text(">only a header\n")
    with pytest.raises(ValueError, match="holds no sequence"):
        read_fasta(p)
    with pytest.raises(ValueError, match="does not exist"):
        read_fasta(tmp_path / "nope.fa")
