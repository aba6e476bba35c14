"""Summaries and verdicts of a verification: each training run as a record at the epoch a trainer
would pick, the matrix's recoveries and verdicts, the photo experiment's verdict, and the
plain-language paragraphs the reports open with.

Recovery = (protected − chance) / (clean − chance) at the chosen epochs: 0 means the model learned
nothing beyond chance from the protected data, 1 as much as from clean data. The verdict rules are
stated rules, not tuned thresholds: *broken* at recovery ≥ 0.5, *no verdict* when the clean model
itself stays within ``CHANCE_MARGIN`` (10 points) of chance (see ``summarize_matrix``).
"""
from __future__ import annotations

from dataclasses import asdict

from ..train.loop import EpochRecord

CHANCE_MARGIN = 0.1


def summarize_run(arch: str, data: str, history: list[EpochRecord], seconds: float) -> dict:
    """A training run as a record: clean test accuracy at the *chosen* epoch (the first of highest
    validation accuracy; the last epoch when there was no validation split), the final one, the
    test peak (an oracle: chosen on the images it scores; kept for reference only), final training
    accuracy, and every epoch."""
    accs = [r.test_acc for r in history]
    vals = [r.val_acc for r in history]
    have_test = bool(history) and all(a is not None for a in accs)
    if history and all(v is not None for v in vals):
        chosen, by = vals.index(max(vals)) + 1, "validation"
    else:
        chosen, by = (len(history) or None), "final epoch"
    return {"arch": arch, "train_data": data, "epochs": len(history),
            "chosen_epoch": chosen, "chosen_by": by,
            "chosen_test_acc": accs[chosen - 1] if have_test and chosen else None,
            "chosen_val_acc": vals[chosen - 1] if chosen and by == "validation" else None,
            "final_test_acc": accs[-1] if have_test else None,
            "peak_test_acc": max(accs) if have_test else None,
            "peak_epoch": (accs.index(max(accs)) + 1) if have_test else None,
            "final_train_acc": history[-1].train_acc if history else None,
            "seconds": seconds, "history": [asdict(r) for r in history]}


def recovery(protected_acc: float, clean_acc: float, chance: float) -> float | None:
    """(protected − chance) / (clean − chance): 0 = learned nothing beyond chance from the
    protected data, 1 = as much as the clean model. None when the clean model is at chance."""
    gap = clean_acc - chance
    return (protected_acc - chance) / gap if gap > 0 else None


def summarize_matrix(cells: list[dict], num_classes: int, chance_margin: float = 0.1) -> list[dict]:
    """One row per (arch, defense), in cell order: the clean and protected runs (chosen-epoch, final
    and oracle-peak test accuracy, robust accuracy), the two recoveries at the chosen epochs and the
    verdict. ``recovered_vs_same`` compares with the clean model trained through the same defense,
    ``recovered_vs_standard`` with the arch's standard (no-defense) clean model.

    Verdict (stated rules, not tuned thresholds): ``"no verdict"`` when the same-defense clean model
    did not learn (chosen-epoch accuracy < chance + ``chance_margin``); ``"broken"`` when
    ``recovered_vs_standard`` ≥ 0.5 (the protected data gives at least half of what clean data gives
    a standard trainer; ``recovered_vs_same`` stands in when there is no standard clean model);
    ``"inconclusive"`` when only ``recovered_vs_same`` ≥ 0.5 (the defense neutralises the noise but its
    own clean model is too weak for the recovery to matter); ``"holds"`` otherwise. None while a
    cell of the row is missing."""
    chance = 1.0 / num_classes
    keys = ("chosen_test_acc", "chosen_epoch", "chosen_by", "final_test_acc", "peak_test_acc", "peak_epoch",
            "robust_acc", "final_train_acc")
    rows: dict[tuple[str, str], dict] = {}
    for c in cells:
        r = rows.setdefault((c["arch"], c["defense"]), {"arch": c["arch"], "defense": c["defense"]})
        r[c["train_data"]] = {k: c.get(k) for k in keys}
    out = []
    for (arch, _), r in rows.items():
        cl, pr = r.get("clean"), r.get("protected")
        std = (rows.get((arch, "standard")) or {}).get("clean")
        std_acc = std["chosen_test_acc"] if std and std["chosen_test_acc"] is not None else None
        r.update(chance=chance, standard_clean_acc=std_acc, recovered_vs_same=None, recovered_vs_standard=None,
                 verdict=None, reason=None)
        if not (cl and pr) or cl["chosen_test_acc"] is None or pr["chosen_test_acc"] is None:
            r["reason"] = "the clean or the protected run is missing"
            out.append(r)
            continue
        c_acc, p_acc = cl["chosen_test_acc"], pr["chosen_test_acc"]
        if c_acc < chance + chance_margin:
            r["verdict"] = "no verdict"
            r["reason"] = (f"the clean model trained through {r['defense']} did not learn ({100 * c_acc:.1f}% at its "
                           f"chosen epoch, below chance {100 * chance:.1f}% + {100 * chance_margin:.0f} points)")
            out.append(r)
            continue
        same = recovery(p_acc, c_acc, chance)
        vs_std = recovery(p_acc, std_acc, chance) if std_acc is not None and std_acc >= chance + chance_margin else None
        r["recovered_vs_same"], r["recovered_vs_standard"] = same, vs_std
        if (vs_std if vs_std is not None else same) >= 0.5:
            r["verdict"] = "broken"
        elif same >= 0.5:
            r["verdict"] = "inconclusive"
            r["reason"] = (f"the protected model recovers {same:.2f} of the {r['defense']} clean model, but that clean "
                           f"model reaches only {100 * c_acc:.1f}% (standard clean {100 * std_acc:.1f}%)")
        else:
            r["verdict"] = "holds"
        out.append(r)
    return out


def verdict_text(report: dict) -> str:
    """One plain-language paragraph (no jargon beyond "training method") summing up the matrix."""
    rows = report["summary"]
    chance = rows[0]["chance"] if rows else 1 / max(len(report.get("classes", [])), 1)
    by = {v: [r for r in rows if r.get("verdict") == v] for v in ("holds", "broken", "inconclusive", "no verdict")}
    judged = len(by["holds"]) + len(by["broken"]) + len(by["inconclusive"])
    n_val = report.get("val_images", 0)
    pick = (f"Each model is scored at the epoch its trainer would pick from {n_val} held-out training images, "
            "on clean test images it never saw. " if n_val else
            "Each model is scored after its last epoch, on clean test images it never saw. ")

    def name(r: dict) -> str:
        return r["defense"] if len(report["matrix"]["archs"]) == 1 else f"{r['defense']} ({r['arch']})"

    parts = []
    for r in rows:
        cl, pr = (r.get("clean") or {}).get("chosen_test_acc"), (r.get("protected") or {}).get("chosen_test_acc")
        if r["defense"] == "standard" and cl is not None and pr is not None:
            parts.append(f"Trained the ordinary way, a model ({r['arch']}) recognises {100 * cl:.0f}% "
                         f"of new test images when it learns from the original images, and "
                         f"{100 * pr:.0f}% when it learns from the protected ones "
                         f"(random guessing: {100 * chance:.0f}%).")
    unfinished = [r for r in rows if r.get("verdict") is None]
    summary = (f"Verdict: of the {len(rows) - len(unfinished)} training methods tried, the protection held against "
               f"{len(by['holds'])} and was broken by {len(by['broken'])}")
    summary += (": " + ", ".join(name(r) for r in by["broken"]) + "." if by["broken"] else ".")
    if not judged:
        summary = ("No verdict yet: no finished training method produced a clean model that learned enough to "
                   "compare against.")
    tail = ("A method breaks the protection when its model, trained on the protected images, gets at least half of "
            "the improvement over guessing that an ordinary model gets from the original images.")
    extra = []
    if by["inconclusive"]:
        extra.append("Inconclusive for " + ", ".join(name(r) for r in by["inconclusive"]) +
                     ": the protection does not slow these methods down, but they learn so little even from the "
                     "original images that this does not show whether they could break it.")
    if by["no verdict"]:
        extra.append("No verdict for " + ", ".join(name(r) for r in by["no verdict"]) +
                     ": trained on the original images, their models did not learn (within "
                     f"{100 * report['matrix'].get('chance_margin', 0.1):.0f} points of guessing).")
    if unfinished:
        extra.append("Not finished: " + ", ".join(name(r) for r in unfinished) + ".")
    if report.get("cells_missing"):
        extra.append(f"{len(report['cells_missing'])} planned model(s) are not trained yet; this report covers the "
                     "finished ones only.")
    return " ".join([summary, *parts, pick.strip(), tail, *extra])


def photo_verdict(runs: list[dict], chance: float, margin: float = CHANCE_MARGIN) -> dict:
    """``recovered`` = (protected − chance) / (unprotected − chance) on the held-out photos, and the
    verdict: "no verdict" (unprotected victim below chance + ``margin``), "broken" (≥ 0.5), "holds"."""
    acc = {r["trained_on"]: r["heldout_accuracy"] for r in runs}
    p, u = acc["protected"], acc["unprotected"]
    if u < chance + margin:
        return {"recovered": None, "verdict": "no verdict",
                "verdict_reason": f"the unprotected victim recognises only {100 * u:.1f}% of the held-out photos "
                                  f"(chance {100 * chance:.1f}% + {100 * margin:.0f} points): nothing to protect"}
    rec = (p - chance) / (u - chance)
    return {"recovered": rec, "verdict": "broken" if rec >= 0.5 else "holds", "verdict_reason": None}


def photo_verdict_text(report: dict) -> str:
    """The plain-language paragraph of a photo-folder verification."""
    acc = {r["trained_on"]: r["heldout_accuracy"] for r in report["runs"]}
    chance = report["chance_heldout_accuracy"]
    n = report["held_out_clean"]
    head = {"holds": "Verdict: the protection worked.", "broken": "Verdict: the protection did not work.",
            "no verdict": "No verdict."}[report["verdict"]]
    body = (f" {n} of your photos were kept back unprotected as a test. A model trained the way a scraper would, on "
            f"a {report['reference']} reference set plus your other photos, recognised "
            f"{100 * acc['unprotected']:.0f}% of those test photos when it learned from the unprotected photos, and "
            f"{100 * acc['protected']:.0f}% when it learned from the protected ones (random guessing: "
            f"{100 * chance:.0f}%).")
    if report["verdict"] == "no verdict":
        tail = (" Even without protection the model did not learn to recognise your photos, so this run cannot show "
                "whether the protection helps: use more photos per class or more epochs.")
    else:
        tail = (f" That is {report['recovered']:.0%} of the unprotected model's improvement over guessing; the protection "
                "counts as working below half.")
    return head + body + tail
