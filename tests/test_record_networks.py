"""Whether two run records attacked the same network (report/networks.py): the weights' hash where both have it,
else the model file and the clean accuracy on the same test images; what the report says when nothing proves it."""

from __future__ import annotations

from cbuap_runner.report.networks import difference, first_mismatch, network_keys, unproven


def run(name: str, weights=None, sha="f", clean_acc=0.9, num_images=10000, seed=0, status="completed") -> dict:
    model = {"digest": "key", "weights_fingerprint": weights, "sha256": sha}
    metrics = {} if clean_acc is None else {"clean_acc": clean_acc, "num_images": num_images}
    return {"_dir": name, "status": status, "seed": seed, "metrics": metrics, "provenance": {"model": model}}


def test_hashed_weights_decide_and_files_alone_do_not():
    assert difference(network_keys(run("a", "w", "f")), network_keys(run("b", "w", "g"))) is None
    assert difference(network_keys(run("a", "w", "f")), network_keys(run("b", "v", "f"))) == "weights"
    # unhashed: another file tells nothing by itself, another clean accuracy on the same images does
    assert difference(network_keys(run("a")), network_keys(run("b", sha="g"))) is None
    assert difference(network_keys(run("a")), network_keys(run("b", sha="g", clean_acc=0.8))) == "weights"


def test_clean_accuracy_on_other_test_images_tells_nothing():
    other_count = run("b", sha="g", clean_acc=0.8, num_images=500)
    other_draw = run("b", sha="g", clean_acc=0.8, num_images=500, seed=1)
    assert first_mismatch([run("a"), other_count]) is None
    assert first_mismatch([run("a", num_images=500), other_draw]) is None
    assert first_mismatch([run("a", num_images=500), run("b", sha="g", clean_acc=0.8, num_images=500)])[0] == "weights"


def test_an_ensembles_files_are_compared_without_failing():
    ensemble = ["aa", "bb"]
    assert first_mismatch([run("a", sha=ensemble), run("b", sha=list(ensemble))]) is None
    assert first_mismatch([run("a", sha=ensemble), run("b", sha=["aa", "cc"], clean_acc=0.5)])[0] == "weights"
    assert "2 model files" in unproven([run("a", sha=ensemble), run("b", sha=["aa", "cc"])])


def test_the_report_says_what_stands_in_for_a_proof():
    assert unproven([run("a"), run("b")]) == ""  # one file
    assert unproven([run("a", "w"), run("b", "w", sha="g")]) == ""  # hashed
    note = unproven([run("a"), run("b", sha="g"), run("c", sha="g", clean_acc=None)])
    assert "2 model files" in note and "(clean accuracy: 0.9000; 1 runs measured none)" in note
    assert "which is not a proof" in note
    assert "clean accuracy: none measured" in unproven([run("a", clean_acc=None), run("b", sha="g", clean_acc=None)])
    assert unproven([run("a"), run("b", sha="g", status="failed")]) == ""  # a failed run is not one of the runs


def test_runs_older_than_model_provenance_are_told_apart_by_clean_accuracy():
    def bare(name: str, clean_acc: float, seed: int = 0) -> dict:
        return {"_dir": name, "status": "completed", "seed": seed,
                "metrics": {"clean_acc": clean_acc, "num_images": 10000}}

    assert first_mismatch([bare("a", 0.9), bare("b", 0.9)]) is None
    assert first_mismatch([bare("a", 0.9), bare("b", 0.8)])[0] == "weights"
    assert first_mismatch([bare("a", 0.9), run("b", clean_acc=0.8)])[0] == "weights"
    assert first_mismatch([bare("a", 0.9), bare("b", 0.8, seed=1)]) is None  # other test images
