"""benchmarks/throughput.py on a tiny model and data set: every throughput is measured, the table shows both models."""
import json
import math

from benchmarks import throughput

TINY = ["--backbone", "test_convnext", "--img-size", "64", "--batch-size", "2", "--steps", "2", "--warmup", "1",
        "--workers", "0", "--device", "cpu", "--decoder-channels", "16", "16", "16", "--loader-batches", "3"]


def test_both_stages_measured_and_tabled(demo_root, tmp_path, capsys):
    output = tmp_path / "throughput.json"
    throughput.main([*TINY, "--data-root", str(demo_root), "--output-json", str(output)])

    results = json.loads(output.read_text())
    rows = {row["model"]: row for row in results["rows"]}
    assert set(rows) == {"segmentation", "classification"}
    for row in rows.values():
        assert (row["backbone"], row["img_size"], row["batch_size"], row["device"]) == ("test_convnext", 64, 2, "cpu")
        assert row["flags"] == "fp32"  # on CPU every speed flag defaults to off
        for key in ("train_images_per_s", "plain_fp32_train_images_per_s", "inference_images_per_s",
                    "loader_images_per_s", "peak_train_memory_mib"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert math.isclose(row["train_speedup"], row["train_images_per_s"] / row["plain_fp32_train_images_per_s"])
        assert math.isclose(row["loader_to_model"], row["loader_images_per_s"] / row["train_images_per_s"])
    assert results["data"] == str(demo_root)

    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | backbone |") and "peak RSS" in table[0]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| segmentation", "| classification"]


def test_unset_flags_come_from_each_stage_and_preset():
    args_of = throughput.get_args(["--preset", "cpu"])
    seg, cls = args_of["segmentation"], args_of["classification"]
    assert (seg.backbone, seg.img_size, seg.batch_size, seg.decoder_channels) == ("efficientnet_lite0", 128, 16, [128, 64, 32])
    assert (cls.backbone, cls.img_size, cls.batch_size) == ("efficientnet_lite0", 128, 32)
    assert seg.data_root is None  # a demo set is generated
    only = throughput.get_args(["--stage", "classification", "--batch-size", "4"])
    assert list(only) == ["classification"] and only["classification"].batch_size == 4
    assert only["classification"].backbone == "convnext_tiny"  # the seed's configuration without --preset
