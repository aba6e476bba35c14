"""The defended-verification report: one self-contained HTML file rendered from ``report.json``
and ``assets.pt`` (written by ``unlearnable.defended.verify_defenses``). No network and no side
files: images are PNG data URIs, learning curves inline SVG, styles inline."""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COLORS = {"clean": "#1f77b4", "protected": "#d62728"}


def _u8(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) uint8 or float in [0, 1] -> (H, W, C) uint8."""
    t = img.detach().cpu()
    if t.dtype != torch.uint8:
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    a = t.permute(1, 2, 0).numpy()
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def png_data_uri(img: torch.Tensor, scale: int = 2) -> str:
    """A (C, H, W) image as a ``data:image/png;base64,...`` URI, upscaled ``scale``× (nearest)."""
    pil = Image.fromarray(_u8(img))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def amplify(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Noise δ in [−ε, ε] mapped to [0, 1] for display: 0.5 + δ / (2ε) (grey = no change)."""
    return (0.5 + delta.float() / (2 * eps)).clamp(0, 1)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'


def svg_curves(series: dict[str, list[dict]], width: int = 360, height: int = 200) -> str:
    """Inline SVG: train accuracy (dashed) and clean test accuracy (solid) per epoch for each named
    history (list of epoch records), accuracy axis 0–100 %."""
    pad_l, pad_b, pad_t, pad_r = 34, 22, 8, 8
    w, h = width - pad_l - pad_r, height - pad_b - pad_t
    n = max((len(hh) for hh in series.values()), default=1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="#fff" stroke="#999"/>']
    for frac in (0.25, 0.5, 0.75, 1.0):
        y = pad_t + h * (1 - frac)
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{pad_l - 3}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{int(frac * 100)}</text>')
    parts.append(f'<text x="{pad_l + w / 2}" y="{height - 4}" font-size="10" text-anchor="middle">epoch (1–{n})</text>')

    def xy(i: int, v: float) -> str:
        x = pad_l + (w * i / (n - 1) if n > 1 else w / 2)
        return f"{x:.1f},{pad_t + h * (1 - v):.1f}"

    for name, hist in series.items():
        color = COLORS.get(name, "#333")
        for key, dash in (("test_acc", ""), ("train_acc", ' stroke-dasharray="4 3"')):
            pts = " ".join(xy(i, r[key]) for i, r in enumerate(hist) if r.get(key) is not None)
            if pts:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{pts}"/>')
    parts.append("</svg>")
    return "".join(parts)


CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.broken{background:#fde0dc}.holds{background:#e3f4e3}
.grid img{margin:1px;image-rendering:pixelated}.curves{display:flex;flex-wrap:wrap;gap:12px}
.curves figure{margin:0}figcaption{font-size:12px}.muted{color:#666;font-size:13px}"""


def render_report(report: dict, assets: dict) -> str:
    """The HTML text of the report."""
    eps = report["eps"]
    cells = report["cells"]
    by_key = {(c["arch"], c["defense"], c["train_data"]): c for c in cells}
    esc = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>unlearnable: defended verification</title>"
           f"<style>{CSS}</style></head><body>",
           f"<h1>Defended verification of {esc(report['dataset'])} ({esc(report['mode'])}, "
           f"ε = {eps * 255:.3g}/255)</h1>",
           f"<p class='muted'>{report['train_images']} protected training images, {report['test_images']} clean test "
           f"images; surrogate {esc(str(report.get('surrogate')))}; device {esc(report['device'])}; "
           f"{report['train_config']['epochs']} epoch(s) per model, lr {report['train_config']['lr']}, "
           f"batch {report['train_config']['batch_size']}. Accuracy is on the clean test set. "
           f"Robust accuracy: PGD-{report['cells'][0].get('robust_eval', {}).get('steps', '–') if cells else '–'} "
           f"at ε = {report['matrix']['at']['eps'] * 255:.3g}/255. "
           "“Recovered” = (protected peak − chance) / (clean peak − chance); the protection counts as "
           "<b>broken</b> by a defense when it recovers at least half (no verdict when the clean model is within "
           "10 points of chance).</p>"]

    out.append("<h2>Summary</h2><table id='summary'><thead><tr><th class='l'>victim</th><th class='l'>defense</th>"
               "<th>clean final</th><th>clean peak</th><th>protected final</th><th>protected peak</th>"
               "<th>robust (clean / protected)</th><th>recovered</th><th class='l'>verdict</th></tr></thead><tbody>")
    for r in report["summary"]:
        cl, pr = r.get("clean") or {}, r.get("protected") or {}
        verdict = r.get("verdict") or "–"
        rec = r.get("recovered")
        out.append(f"<tr data-arch='{esc(r['arch'])}' data-defense='{esc(r['defense'])}' class='{verdict}'>"
                   f"<td class='l'>{esc(r['arch'])}</td><td class='l'>{esc(r['defense'])}</td>"
                   f"<td>{_pct(cl.get('final_test_acc'))}</td><td>{_pct(cl.get('peak_test_acc'))}</td>"
                   f"<td>{_pct(pr.get('final_test_acc'))}</td><td>{_pct(pr.get('peak_test_acc'))}</td>"
                   f"<td>{_pct(cl.get('robust_acc'))} / {_pct(pr.get('robust_acc'))}</td>"
                   f"<td>{'–' if rec is None else f'{rec:.2f}'}</td><td class='l'>{verdict}</td></tr>")
    out.append("</tbody></table>")

    out.append("<h2>Defenses</h2><table id='defenses'><tbody>")
    for d, s in report.get("defense_summaries", {}).items():
        out.append(f"<tr data-defense='{esc(d)}'><td class='l'>{esc(d)}</td><td class='l'>{esc(s)}</td></tr>")
    out.append("</tbody></table>")

    out.append("<h2>Learning curves</h2><p class='muted'>Solid: clean test accuracy; dashed: training accuracy "
               "(on the data the model trained on). <span style='color:#1f77b4'>Blue: trained on clean "
               "images</span>, <span style='color:#d62728'>red: trained on protected images</span>. A protected "
               "model with high training but low test accuracy learned the noise, not the images. (CAS trains with the "
               "true class's channel mask, so its training accuracy reads high by construction.)</p><div class='curves'>")
    for arch in report["matrix"]["archs"]:
        for d in report["matrix"]["defenses"]:
            series = {s: by_key[(arch, d, s)]["history"] for s in report["matrix"]["data"] if (arch, d, s) in by_key}
            out.append(f"<figure>{svg_curves(series)}<figcaption>{esc(arch)} · {esc(d)}</figcaption></figure>")
    out.append("</div>")

    out.append("<h2>Before and after</h2><p class='muted'>One training image per class: original, protected, and the "
               "noise amplified to the full range (grey = unchanged, 0.5 + δ / 2ε).</p><table id='images' class='grid'>"
               "<thead><tr><th class='l'>row</th>" + "".join(f"<th>{esc(c)}</th>" for c in assets["classes"]) +
               "</tr></thead><tbody>")
    for label, imgs in (("original", assets["clean"]), ("protected", assets["protected"]),
                        ("noise ×" + f"{0.5 / eps:.0f}", amplify(assets["noise"], eps))):
        out.append(f"<tr><td class='l'>{esc(label)}</td>" +
                   "".join(f"<td>{_img(png_data_uri(im, 3), f'{label} {c}')}</td>"
                           for im, c in zip(imgs, assets["classes"])) + "</tr>")
    out.append("</tbody></table>")

    classes = report["classes"]
    pat_cells = [c for c in cells if c.get("patterns")]
    if pat_cells:
        out.append("<h2>Class-wise patterns</h2><p class='muted'>What each model takes as the evidence for a class "
                   "(Zhao et al., arXiv 2101.06898): the fewest pixels of a canvas image of that class that make the "
                   "model predict the class on images of other classes, shown on white. Percentages: predictive power, "
                   "the share of other-class test images assigned to the class once those pixels are pasted in. "
                   "Canvas: a clean test image, or a protected training image. “noise”: the class's noise alone "
                   "(the mean δ of the class for sample-wise noise) added to other-class images. A model that "
                   "learned the protection follows the protected canvas and the noise, not the clean canvas.</p>")
        out.append("<table id='patterns' class='grid'><thead><tr><th class='l'>model</th><th class='l'>canvas</th>"
                   "<th>mean</th>" + "".join(f"<th>{esc(c)}</th>" for c in classes) + "</tr></thead><tbody>")
        for c in pat_cells:
            key = f"{c['arch']}--{c['defense']}--{c['train_data']}"
            for kind, res in c["patterns"].items():
                imgs = assets["cells"].get(f"{key}/patterns/{kind}")
                row = [f"<tr data-cell='{esc(key)}' data-canvas='{esc(kind)}'><td class='l'>{esc(c['arch'])} · "
                       f"{esc(c['defense'])} · {esc(c['train_data'])}</td><td class='l'>{esc(kind)}</td>"
                       f"<td>{_pct(res['mean_predictive_power'])}</td>"]
                for k, p in enumerate(res["predictive_power"]):
                    pic = _img(png_data_uri(imgs[k], 2), f"{kind} {classes[k]}") + "<br>" if imgs is not None else ""
                    row.append(f"<td>{pic}{_pct(p)}</td>")
                out.append("".join(row) + "</tr>")
        out.append("</tbody></table>")

    out.append("<h2>All runs</h2><table id='cells'><thead><tr><th class='l'>victim</th><th class='l'>defense</th>"
               "<th class='l'>trained on</th><th>final</th><th>peak (epoch)</th><th>train acc</th><th>robust</th>"
               "<th>minutes</th></tr></thead><tbody>")
    for c in cells:
        out.append(f"<tr data-cell='{esc(c['arch'])}--{esc(c['defense'])}--{esc(c['train_data'])}'>"
                   f"<td class='l'>{esc(c['arch'])}</td><td class='l'>{esc(c['defense'])}</td>"
                   f"<td class='l'>{esc(c['train_data'])}</td><td>{_pct(c['final_test_acc'])}</td>"
                   f"<td>{_pct(c['peak_test_acc'])} ({c['peak_epoch']})</td><td>{_pct(c['final_train_acc'])}</td>"
                   f"<td>{_pct(c.get('robust_acc'))}</td><td>{c['seconds'] / 60:.1f}</td></tr>")
    out.append("</tbody></table></body></html>")
    return "\n".join(out)


def write_report(out_dir: str | os.PathLike) -> Path:
    """Render ``OUT/report.json`` + ``OUT/assets.pt`` into ``OUT/report.html`` (atomically)."""
    out = Path(out_dir)
    report = json.loads((out / "report.json").read_text())
    assets = torch.load(out / "assets.pt")
    path = out / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_report(report, assets), encoding="utf-8")
    os.replace(tmp, path)
    return path
