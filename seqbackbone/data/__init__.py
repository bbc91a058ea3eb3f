"""Data readers users can reuse: audio folders, DNA CSV / FASTA files, MNIST IDX files and image folders."""

from .audio import AudioFile, AudioSet, list_audio_folder, load_audio_files, read_audio, split_audio_files
from .dna import IUPAC, SeqTable, read_fasta, read_seq_csv
from .images import ImageSet, load_image_folder, load_mnist, read_idx

__all__ = [
    "IUPAC",
    "AudioFile",
    "AudioSet",
    "ImageSet",
    "SeqTable",
    "list_audio_folder",
    "load_audio_files",
    "load_image_folder",
    "load_mnist",
    "read_audio",
    "read_fasta",
    "read_idx",
    "read_seq_csv",
    "split_audio_files",
]
