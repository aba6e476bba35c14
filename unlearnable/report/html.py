"""The verification reports: self-contained HTML files rendered from ``report.json`` and
``assets.pt`` (written by ``unlearnable.verify.matrix.verify_defenses``), or from a photo-folder
verification (``unlearnable.verify.photos``). Each opens with a plain-language verdict; every
plot has axis labels with units, a legend and the chance line. No network and no side
files: images are PNG data URIs, learning curves inline SVG, styles inline."""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..eval.summary import photo_verdict_text

COLORS = {"clean": "#1f77b4", "unprotected": "#1f77b4", "protected": "#d62728"}


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


def _axes(parts: list[str], x0: float, y0: float, w: float, h: float, ylabel: str) -> None:
    """Frame, 0–100 % gridlines with tick labels, and the y-axis label (rotated) of a plot."""
    parts.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="#fff" stroke="#999"/>')
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y0 + h * (1 - frac)
        parts.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{x0 - 3}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{int(frac * 100)}</text>')
    parts.append(f'<text x="11" y="{y0 + h / 2:.1f}" font-size="10" text-anchor="middle" '
                 f'transform="rotate(-90 11 {y0 + h / 2:.1f})">{html.escape(ylabel)}</text>')


def _chance(parts: list[str], x0: float, y0: float, w: float, h: float, chance: float | None) -> None:
    if chance is not None:
        y = y0 + h * (1 - chance)
        parts.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#555" stroke-width="1" '
                     f'stroke-dasharray="1 2"/>')


def _legend(parts: list[str], x: float, y: float, items: list[tuple[str, str, str]]) -> None:
    """items: (label, colour, dash pattern or '') drawn as short line samples in one row."""
    for label, color, dash in items:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<line x1="{x:.1f}" x2="{x + 16:.1f}" y1="{y - 3:.1f}" y2="{y - 3:.1f}" stroke="{color}" '
                     f'stroke-width="1.8"{d}/><text x="{x + 19:.1f}" y="{y:.1f}" font-size="10">{html.escape(label)}</text>')
        x += 24 + 5.6 * len(label)


def svg_curves(series: dict[str, list[dict]], width: int = 380, height: int = 236, chance: float | None = None,
               chosen: dict[str, int | None] | None = None) -> str:
    """Inline SVG learning curves, accuracy (%) against epoch: clean test accuracy (solid), training
    accuracy on the data trained on (dashed) and validation accuracy on its held-out part (dotted)
    for each named history (list of epoch records); a dotted grey line at ``chance``; a circle at
    each run's ``chosen`` epoch (1-based) on its test curve; a legend underneath."""
    pad_l, pad_b, pad_t, pad_r = 40, 52, 8, 8
    w, h = width - pad_l - pad_r, height - pad_b - pad_t
    n = max((len(hh) for hh in series.values()), default=1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    _axes(parts, pad_l, pad_t, w, h, "accuracy (%)")
    _chance(parts, pad_l, pad_t, w, h, chance)
    parts.append(f'<text x="{pad_l + w / 2}" y="{pad_t + h + 25}" font-size="10" text-anchor="middle">'
                 f'epoch</text>')

    def x_of(i: int) -> float:
        return pad_l + (w * i / (n - 1) if n > 1 else w / 2)

    for i in range(0, n, max(1, math.ceil(n / 10))):
        parts.append(f'<text x="{x_of(i):.1f}" y="{pad_t + h + 12}" font-size="9" text-anchor="middle">{i + 1}</text>')

    def xy(i: int, v: float) -> str:
        return f"{x_of(i):.1f},{pad_t + h * (1 - v):.1f}"

    has = set()
    for name, hist in series.items():
        color = COLORS.get(name, "#333")
        for key, dash in (("test_acc", ""), ("train_acc", ' stroke-dasharray="4 3"'), ("val_acc", ' stroke-dasharray="1.5 2"')):
            pts = " ".join(xy(i, r[key]) for i, r in enumerate(hist) if r.get(key) is not None)
            if pts:
                has.add(key)
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{pts}"/>')
        e = (chosen or {}).get(name)
        if e and e <= len(hist) and hist[e - 1].get("test_acc") is not None:
            x, y = xy(e - 1, hist[e - 1]["test_acc"]).split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="3.5" fill="none" stroke="{color}" stroke-width="1.6"/>')
    items = [(f"trained on {k}", COLORS.get(k, "#333"), "") for k in series]
    _legend(parts, pad_l, height - 16, items + ([("chance", "#555", "1 2")] if chance is not None else []))
    style = [(lab, "#333", dash) for key, lab, dash in (("test_acc", "test", ""), ("train_acc", "train", "4 3"),
                                                         ("val_acc", "validation", "1.5 2")) if key in has]
    _legend(parts, pad_l, height - 3, style + ([("○ chosen epoch", "#fff", "")] if chosen else []))
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(groups: list[tuple[str, dict[str, float | None]]], chance: float | None = None,
             reference: tuple[str, float] | None = None, ylabel: str = "clean test accuracy (%)",
             height: int = 250) -> str:
    """Inline SVG grouped bar chart in % (0–100): one group per label, one bar per series
    (colours of ``COLORS``), a dotted chance line, an optional dashed reference line (label, value),
    value labels on the bars and a legend."""
    names = list(dict.fromkeys(k for _, g in groups for k in g))
    bar, gap = 14, 14
    pad_l, pad_b, pad_t, pad_r = 40, 70, 8, 8
    gw = bar * max(len(names), 1) + gap
    w = gw * max(len(groups), 1)
    width, h = pad_l + w + pad_r, height - pad_b - pad_t
    width = max(width, 420)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    _axes(parts, pad_l, pad_t, w, h, ylabel)
    for gi, (label, g) in enumerate(groups):
        x = pad_l + gi * gw + gap / 2
        for k in names:
            v = g.get(k)
            if v is not None:
                top = pad_t + h * (1 - v)
                parts.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar - 1}" height="{pad_t + h - top:.1f}" '
                             f'fill="{COLORS.get(k, "#333")}"><title>{html.escape(label)} · {html.escape(k)}: '
                             f'{100 * v:.1f}%</title></rect>'
                             f'<text x="{x + bar / 2:.1f}" y="{top - 2:.1f}" font-size="8" text-anchor="middle">'
                             f'{100 * v:.0f}</text>')
            x += bar
        cx = pad_l + gi * gw + gw / 2
        parts.append(f'<text x="{cx:.1f}" y="{pad_t + h + 12}" font-size="10" text-anchor="end" '
                     f'transform="rotate(-35 {cx:.1f} {pad_t + h + 12})">{html.escape(label)}</text>')
    _chance(parts, pad_l, pad_t, w, h, chance)
    items = [(f"trained on {k}", COLORS.get(k, "#333"), "") for k in names]
    if reference is not None:
        y = pad_t + h * (1 - reference[1])
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#1f77b4" '
                     f'stroke-width="1.2" stroke-dasharray="6 3"/>')
        items.append((reference[0], "#1f77b4", "6 3"))
    if chance is not None:
        items.append(("chance", "#555", "1 2"))
    _legend(parts, pad_l, height - 4, items)
    parts.append("</svg>")
    return "".join(parts)


CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.broken{background:#fde0dc}.holds{background:#e3f4e3}
.inconclusive,.no-verdict{background:#f3f3f3}.verdict{font-size:17px;line-height:1.45;max-width:900px}
.grid img{margin:1px;image-rendering:pixelated}.curves{display:flex;flex-wrap:wrap;gap:12px}
.curves figure{margin:0}figcaption{font-size:12px}.muted{color:#666;font-size:13px}"""


def _rec(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def render_report(report: dict, assets: dict) -> str:
    """The HTML text of the report."""
    eps = report["eps"]
    cells = report["cells"]
    by_key = {(c["arch"], c["defense"], c["train_data"]): c for c in cells}
    esc = html.escape
    m = report["matrix"]
    tc = report["train_config"]
    summary = report["summary"]
    chance = summary[0]["chance"] if summary else 1 / max(len(report["classes"]), 1)
    robust = m.get("robust", {}).get("label")
    overrides = m.get("recipe_overrides") or {}
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>unlearnable: defended verification</title>"
           f"<style>{CSS}</style></head><body>",
           f"<h1>Defended verification of {esc(report['dataset'])} ({esc(report['mode'])}, "
           f"ε = {eps * 255:.3g}/255)</h1>",
           f"<p id='verdict' class='verdict'>{esc(report.get('verdict_text') or '')}</p>",
           f"<p class='muted'>{report['train_images']} training images ({report.get('val_images', 0)} more held out "
           f"for validation: the epoch of each model is chosen on the held-out part of the data it trains on, "
           f"protected or clean), {report['test_images']} clean test images; surrogate "
           f"{esc(str(report.get('surrogate')))}; device {esc(report['device'])}; {tc['epochs']} epoch(s) per model, "
           f"shared recipe lr {tc['lr']}, weight decay {tc['weight_decay']}, {esc(tc['schedule'])}, batch "
           f"{tc['batch_size']}"
           + ("; paper recipes: " + "; ".join(f"{esc(d)} " + ", ".join(f"{esc(k)} {esc(str(v))}" for k, v in o.items())
                                             for d, o in overrides.items()) if overrides else "") +
           f". Accuracy is on the clean test set, at the chosen epoch unless marked. "
           f"Robust accuracy: {esc(robust) if robust else 'not measured'}. "
           "“Recovered” = (protected − chance) / (clean − chance) at the chosen epochs, against the clean model of the "
           "same defense and against the standard clean model. Verdict: <b>broken</b> when the protected model recovers "
           "at least half of the standard clean model; <b>inconclusive</b> when it recovers half of its own defense's "
           "clean model but not of the standard one; <b>no verdict</b> when the defense's clean model is within "
           f"{100 * m.get('chance_margin', 0.1):.0f} points of chance ({100 * chance:.0f}%); <b>holds</b> otherwise.</p>"]

    groups = []
    for r in summary:
        lab = r["defense"] if len(m["archs"]) == 1 else f"{r['arch']} · {r['defense']}"
        groups.append((lab, {k: (r.get(k) or {}).get("chosen_test_acc") for k in m["data"]}))
    std = next((r["standard_clean_acc"] for r in summary if r.get("standard_clean_acc") is not None), None)
    out.append("<h2>Clean test accuracy at the chosen epoch</h2><figure>" +
               svg_bars(groups, chance, ("standard clean model", std) if std is not None else None) +
               "<figcaption>Each bar: accuracy (%) on clean test images of a model trained through that defense on the "
               "original (blue) or protected (red) training images, at the epoch chosen on validation data. Dashed "
               "line: the standard model trained on the original images; dotted: random guessing.</figcaption></figure>")

    out.append("<h2>Summary</h2><table id='summary'><thead><tr><th class='l'>victim</th><th class='l'>defense</th>"
               "<th>clean chosen (epoch)</th><th>clean final</th><th>protected chosen (epoch)</th>"
               "<th>protected final</th><th>protected test peak (oracle)</th>"
               "<th>robust (clean / protected)</th><th>recovered vs same defense</th>"
               "<th>recovered vs standard</th><th class='l'>verdict</th></tr></thead><tbody>")
    for r in summary:
        cl, pr = r.get("clean") or {}, r.get("protected") or {}
        verdict = r.get("verdict") or "–"
        why = f" title='{esc(r['reason'])}'" if r.get("reason") else ""
        note = f"<br><small>{esc(r['reason'])}</small>" if r.get("reason") and r.get("verdict") else ""
        out.append(f"<tr data-arch='{esc(r['arch'])}' data-defense='{esc(r['defense'])}' "
                   f"class='{verdict.replace(' ', '-')}'{why}>"
                   f"<td class='l'>{esc(r['arch'])}</td><td class='l'>{esc(r['defense'])}</td>"
                   f"<td>{_pct(cl.get('chosen_test_acc'))} ({cl.get('chosen_epoch', '–')})</td>"
                   f"<td>{_pct(cl.get('final_test_acc'))}</td>"
                   f"<td>{_pct(pr.get('chosen_test_acc'))} ({pr.get('chosen_epoch', '–')})</td>"
                   f"<td>{_pct(pr.get('final_test_acc'))}</td><td>{_pct(pr.get('peak_test_acc'))}</td>"
                   f"<td>{_pct(cl.get('robust_acc'))} / {_pct(pr.get('robust_acc'))}</td>"
                   f"<td>{_rec(r.get('recovered_vs_same'))}</td><td>{_rec(r.get('recovered_vs_standard'))}</td>"
                   f"<td class='l'>{esc(verdict)}{note}</td></tr>")
    out.append("</tbody></table>")

    out.append("<h2>Defenses</h2><table id='defenses'><thead><tr><th class='l'>defense</th><th class='l'>what it does</th>"
               "<th class='l'>recipe</th></tr></thead><tbody>")
    for d, s_ in report.get("defense_summaries", {}).items():
        rc = (m.get("recipes") or {}).get(d)
        rtxt = (f"lr {rc['lr']}, wd {rc['weight_decay']}, {rc['schedule']}, clip {rc['grad_clip']}"
                + (" (paper)" if d in overrides else " (shared)")) if rc else "–"
        out.append(f"<tr data-defense='{esc(d)}'><td class='l'>{esc(d)}</td><td class='l'>{esc(s_)}</td>"
                   f"<td class='l'>{esc(rtxt)}</td></tr>")
    out.append("</tbody></table>")

    out.append("<h2>Learning curves</h2><p class='muted'>Accuracy (%) per epoch. Solid: clean test accuracy; dashed: "
               "training accuracy (on the data the model trained on); dotted: validation accuracy (held-out part of "
               "the same training data); circle: the chosen epoch. Blue: trained on original images; red: trained on "
               "protected images; grey dotted line: chance. A protected model with high training but low test "
               "accuracy learned the noise, not the images. (CAS trains with the true class's channel mask, so its "
               "training accuracy reads high by construction.)</p><div class='curves'>")
    for arch in m["archs"]:
        for d in m["defenses"]:
            keys = [(arch, d, s_) for s_ in m["data"] if (arch, d, s_) in by_key]
            series = {k[2]: by_key[k]["history"] for k in keys}
            chosen = {k[2]: by_key[k].get("chosen_epoch") for k in keys}
            out.append(f"<figure>{svg_curves(series, chance=chance, chosen=chosen)}"
                       f"<figcaption>{esc(arch)} · {esc(d)}</figcaption></figure>")
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
               "<th class='l'>trained on</th><th>chosen (epoch)</th><th>final</th><th>test peak, oracle (epoch)</th>"
               "<th>train acc</th><th>robust</th>"
               "<th>minutes</th></tr></thead><tbody>")
    for c in cells:
        out.append(f"<tr data-cell='{esc(c['arch'])}--{esc(c['defense'])}--{esc(c['train_data'])}'>"
                   f"<td class='l'>{esc(c['arch'])}</td><td class='l'>{esc(c['defense'])}</td>"
                   f"<td class='l'>{esc(c['train_data'])}</td>"
                   f"<td>{_pct(c.get('chosen_test_acc'))} ({c.get('chosen_epoch', '–')})</td>"
                   f"<td>{_pct(c['final_test_acc'])}</td>"
                   f"<td>{_pct(c['peak_test_acc'])} ({c['peak_epoch']})</td><td>{_pct(c['final_train_acc'])}</td>"
                   f"<td>{_pct(c.get('robust_acc'))}</td><td>{c['seconds'] / 60:.1f}</td></tr>")
    out.append("</tbody></table></body></html>")
    return "\n".join(out)


def _write_text_atomic(path: Path, text: str) -> Path:
    """``text`` (UTF-8) through the one checked atomic writer (``data.storage.write_atomic``)."""
    from ..data.storage import write_atomic

    write_atomic(path, text.encode("utf-8"))
    return path


def write_report(out_dir: str | os.PathLike) -> Path:
    """Render ``OUT/report.json`` + ``OUT/assets.pt`` into ``OUT/report.html`` (atomically)."""
    out = Path(out_dir)
    report = json.loads((out / "report.json").read_text())
    assets = torch.load(out / "assets.pt", weights_only=True)
    return _write_text_atomic(out / "report.html", render_report(report, assets))


def _defense_note(report: dict) -> str:
    """', both trained through the defense NAME (summary)' for a photo report whose victims used one
    (reports without the key: standard training)."""
    name = report.get("defense", "standard")
    if name == "standard":
        return ""
    return f", both trained through the defense {html.escape(name)} ({html.escape(report['defense_summary'])})"


def _visibility_note(report: dict) -> str:
    """'; a visible colour change on X% of the flat areas (...)' for a photo report that measured it."""
    esc = html.escape
    v = report["protection"].get("visibility")
    if not v or not v["per_photo"]:
        return ""
    share = v["flat_visible_colour_share_mean"]
    if share is None:
        return "; the protected photos have no flat areas, where colour changes show most"
    return (f"; a visible colour change on <span id='visible'>{_pct(share)}</span> of the protected photos' flat "
            f"areas (mean over {esc(v['photos_scored'])}; S-CIELAB above one just-noticeable difference, at 1:1 "
            "on a 96-ppi screen from 60 cm)")


def render_photo_report(report: dict, examples: dict) -> str:
    """The HTML text of a photo-folder verification (``verify-photos.json`` plus example images:
    ``clean``/``protected`` uint8 (N, 3, H, W) as the scraper saw them, and their file ``names``)."""
    esc = html.escape
    chance = report["chance_heldout_accuracy"]
    runs = {r["trained_on"]: r for r in report["runs"]}
    series = {k: [{"test_acc": a} for a in r.get("heldout_curve", [])] for k, r in runs.items()}
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>unlearnable: photo verification</title>"
           f"<style>{CSS}</style></head><body>",
           f"<h1>Does protecting {esc(report['folder'])} stop a model from learning it?</h1>",
           f"<p id='verdict' class='verdict'>{esc(photo_verdict_text(report))}</p>",
           f"<p class='muted'>{report['photos']} photos in {len(report['classes'])} class(es); "
           f"{report['protected_for_training']} protected and used for training, {report['held_out_clean']} held out "
           f"clean. Reference: {esc(report['reference'])}, {report['reference_train_images']} training images of "
           f"{len(report['reference_classes'])} classes. Scraper: resize to {report['scraper']['size']} px, JPEG "
           f"quality {report['scraper']['jpeg_quality']}, {esc(report['scraper']['augment'])}. Victim "
           f"{esc(report['victim'])}, {report['train']['epochs']} epochs, lr {report['train']['lr']}"
           f"{_defense_note(report)}. Protection: "
           f"ε = {report['protection']['eps_255']:.3g}/255{_visibility_note(report)}. Held-out accuracy: the share of "
           f"held-out photos put in their own class, after the last epoch (chance {100 * chance:.1f}%).</p>",
           "<h2>Held-out photos recognised</h2><table id='runs'><thead><tr><th class='l'>victim trained on</th>"
           "<th>held-out accuracy</th><th>photo train accuracy</th>"
           f"<th>{esc(report['reference'])} test accuracy</th></tr></thead><tbody>"]
    for k, r in runs.items():
        out.append(f"<tr data-run='{esc(k)}'><td class='l'>{esc(k)} photos</td><td>{_pct(r['heldout_accuracy'])}</td>"
                   f"<td>{_pct(r['photo_train_accuracy'])}</td><td>{_pct(r['reference_test_accuracy'])}</td></tr>")
    out.append("</tbody></table>")
    out.append("<div class='curves'><figure>" +
               svg_bars([("held-out photos", {k: r["heldout_accuracy"] for k, r in runs.items()})], chance,
                        ylabel="held-out accuracy (%)") +
               "<figcaption>Held-out accuracy (%) after the last epoch; blue: victim trained on the unprotected "
               "photos, red: on the protected photos; dotted: chance.</figcaption></figure>")
    out.append("<figure>" + svg_curves(series, chance=chance) +
               "<figcaption>Held-out accuracy (%) per epoch (solid) of each victim.</figcaption></figure></div>")
    if len(examples.get("clean", [])):
        diff = examples["protected"].float() - examples["clean"].float()
        out.append("<h2>Before and after (as the scraper sees them)</h2><p class='muted'>Training photos after the "
                   f"scraper's resize and JPEG: original, protected, and the difference amplified ×"
                   f"{127.5 / max(float(diff.abs().max()), 1):.0f} (grey = unchanged).</p><table id='images' class='grid'>"
                   "<thead><tr><th class='l'>row</th>" + "".join(f"<th>{esc(n)}</th>" for n in examples["names"]) +
                   "</tr></thead><tbody>")
        scale = max(float(diff.abs().max()), 1.0)
        for label, imgs in (("original", examples["clean"]), ("protected", examples["protected"]),
                            ("difference", (0.5 + diff / (2 * scale)).clamp(0, 1))):
            out.append(f"<tr><td class='l'>{esc(label)}</td>" +
                       "".join(f"<td>{_img(png_data_uri(im, 3), f'{label} {n}')}</td>"
                               for im, n in zip(imgs, examples["names"])) + "</tr>")
        out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_photo_report(path: str | os.PathLike, report: dict, examples: dict) -> Path:
    """Render a photo-folder verification into ``path`` (atomically)."""
    return _write_text_atomic(Path(path), render_photo_report(report, examples))
