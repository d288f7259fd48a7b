"""index-images on a corpus of awkward files: none stops the run, each failure is recorded."""
import struct
import zlib

import numpy as np
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.stages.index_images import index_images
from pipeline.config import RegionConfig
from stores.catalog import Catalog


def _png_header_only(path, width, height):
    """A valid PNG header declaring a huge image (a decompression bomb by size)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))


def make_corpus(root):
    root.mkdir(parents=True)
    good = {}
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((60, 90, 3)) * 255).astype(np.uint8))
    rgb.save(root / "plain.jpg")
    good["plain.jpg"] = (90, 60)
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    good["cmyk.jpg"] = (90, 60)
    Image.fromarray((rng.random((40, 50)) * 65535).astype(np.uint16)).save(root / "deep16.png")
    good["deep16.png"] = (50, 40)
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(root / "palette_alpha.png", transparency=0)
    good["palette_alpha.png"] = (90, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display: stored 90x60 shows as 60x90
    rgb.save(root / "rotated.jpg", exif=exif.tobytes())
    good["rotated.jpg"] = (60, 90)
    Image.new("RGB", (1, 1), (10, 200, 10)).save(root / "one_pixel.png")
    good["one_pixel.png"] = (1, 1)
    bad = {}
    (root / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty file"
    data = (root / "plain.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    bad["truncated.jpg"] = "corrupt"
    (root / "text.png").write_text("this is not an image")
    bad["text.png"] = "not an image"
    _png_header_only(root / "bomb.png", 20000, 20000)
    bad["bomb.png"] = "decompression bomb"
    return good, bad


def test_bad_image_corpus(tmp_path, tiny_model):
    good, bad = make_corpus(tmp_path / "corpus")
    with Catalog(tmp_path / "s") as cat:
        rep = index_images(cat, tiny_model, [str(tmp_path / "corpus")], RegionConfig(n_crops=3), progress=False)
        assert (rep.indexed, rep.failed) == (len(good), len(bad))
        sizes = {p.rsplit("/", 1)[1]: (w, h) for p, w, h in cat.query("select path, width, height from images").fetchall()}
        assert sizes == good  # EXIF orientation applied: rotated.jpg is stored 60 wide
        errors = {p.rsplit("/", 1)[1]: r for p, r in cat.query("select path, reason from image_errors").fetchall()}
        assert set(errors) == set(bad)
        for name, reason in bad.items():
            assert reason in errors[name], (name, errors[name])
        assert cat.query("select count(*) from regions").fetchone()[0] == 4 * len(good)


def test_cli_exit_status_and_one_line_errors(tmp_path):
    good, bad = make_corpus(tmp_path / "corpus")
    runner = CliRunner()
    store = str(tmp_path / "s")
    args = ["index-images", "--store", store, "--model", "zsl-tiny", "--pretrained", "random:0", "--n-crops", "2", "--workers", "0"]
    res = runner.invoke(cli, args + [str(tmp_path / "corpus")])
    assert res.exit_code == 1, res.output  # some images failed
    assert f"{len(good)} images indexed" in res.output and f"{len(bad)} failed" in res.output
    res = runner.invoke(cli, args + [str(tmp_path / "nope")])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "no such file" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(cli, args + [str(tmp_path / "corpus" / "text.png"), str(tmp_path / "x.txt")])
    assert res.exit_code != 0 and "Traceback" not in res.output
