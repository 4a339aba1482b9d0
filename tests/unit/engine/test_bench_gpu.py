"""``python -m bench.gpu --tiny``: the GPU benchmark's code path, on the CPU, quickly."""

from __future__ import annotations

from bench import gpu


def test_tiny_run_measures_every_row_and_appends_a_section(tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    assert gpu.main(["--tiny", "--steps", "1", "--batch", "1", "--repeats", "1", "--paired-lora", "2",
                     "--out", str(out)]) == 0
    text = out.read_text()
    for lora in ("LoRA: none |", "LoRA: rank 16 |", "LoRA: none after LoRA |"):
        assert f"fp32, eager, batch 1, {lora}" in text
    for path in ("plain UNet (no LoRA ever)", "rank-16 LoRA in the slots", "no LoRA after a LoRA (slots off)"):
        assert f"| {path} |" in text
    assert "| plain UNet (no LoRA ever) | " in text and "| 1.00x | 1.00-1.00x |" in text
    assert "torch 2." in text and "peft " in text and "(locks/)" in text
    assert "H100, TensorRT 1.5 s" in text and "13.5 TFLOP per CFG step" in text
    assert "bench.gpu —" in text and "tiny demo model" in capsys.readouterr().out


def test_the_floor_and_the_peaks():
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.peak_tflops("Some Future GPU") is None
    assert abs(gpu.floor_s(30, 989.0) - 30 * 13.5 / 989.0) < 1e-9  # 0.41 s per 1024² image on an H100
    assert abs(gpu.floor_s(30, 989.0, 512, 512) - gpu.floor_s(30, 989.0) / 4) < 1e-9
    assert gpu.floor_s(30, None) is None


def test_versions_come_from_the_locks(tmp_path):
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "a.txt").write_text("torch==9.1.0 \\\n    --hash=sha256:x\ndiffusers==1.2.3\n")
    (tmp_path / "locks" / "b.txt").write_text("peft==0.5.0\ntorch==0.0.1\n")
    assert gpu.lock_versions(tmp_path) == "torch 9.1.0, diffusers 1.2.3, transformers ?, peft 0.5.0 (locks/)"
