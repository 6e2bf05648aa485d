"The Qwen2.5-VL Stage 1 Profiler: window un-permutation, LoRA targets, loading, and a run through the CLI on tiny."
import json
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from dflab.cli import run_cli

pytestmark = pytest.mark.filterwarnings('ignore::FutureWarning')


@pytest.fixture(scope='module')
def prof():
    torch.set_num_threads(1)
    import dflab.qwen.profiler as P
    return P


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "One short Stage 1 run of the shipped tiny config through `dflab train` (2 epochs of 3 steps)."
    out = tmp_path_factory.mktemp('runs')
    rc, o, e = run_cli('train', '--config', 'profiler-tiny', f'run.out_dir={out}', 'stage1_training.epochs=2',
                       'stage1_training.batch_size=64', 'stage1_training.eval_batch_size=128')
    assert rc == 0, e
    return out/'profiler-tiny', o


def test_patch_grids_undo_the_window_order(prof):
    "Identity blocks and a patch-mean embedding: the un-permuted last hidden state is the image averaged per patch."
    from PIL import Image
    vt = prof._tiny_visual(0).eval()
    with torch.no_grad():
        for b in vt.blocks:
            for lin in (b.attn.proj, b.mlp.down_proj): lin.weight.zero_(); lin.bias.zero_()
        vt.patch_embed.proj.weight.zero_(); vt.patch_embed.proj.weight[0] = 1 / (3 * 2 * 8 * 8)
    rng = np.random.default_rng(1)
    ims = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((96, 64), (64, 64), (32, 80))]
    enc = prof.tiny_image_processor()(ims, return_tensors='pt', do_normalize=False)
    with torch.no_grad(): hid = vt(enc['pixel_values'], grid_thw=enc['image_grid_thw']).last_hidden_state
    for im, g in zip(ims, prof.patch_grids(hid, enc['image_grid_thw'], vt)):
        x = torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1).mean(0)[None]
        assert torch.allclose(g[0], torch.nn.functional.avg_pool2d(x, 8)[0], atol=1e-5)
    n = 12 * 8                                                     # the first image's patches, reshaped naively
    assert not torch.allclose(hid[:n, 0].reshape(12, 8), prof.patch_grids(hid, enc['image_grid_thw'], vt)[0][0], atol=1e-3)


def test_lora_trains_only_the_vision_blocks(prof):
    from peft import LoraConfig, get_peft_model
    model, _ = prof.load_qwen_vl('tiny')
    pm = get_peft_model(model, LoraConfig(r=4, target_modules=prof.VISION_LORA_TARGET))
    trained = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert len(trained) == 4 * 5 * 2 and all('.visual.blocks.' in n and '.lora_' in n for n in trained)
    prof_model, _ = prof.build_profiler(prof.ProfilerModelConfig(), ['a', 'b'])
    outside = [n for n, p in prof_model.named_parameters() if p.requires_grad and '.lora_' not in n]
    assert outside and all(n.startswith('heads.') for n in outside)


def test_a_model_folder_loads_the_same_tower(prof, tmp_path):
    prof.save_tiny_qwen(tmp_path/'tiny')
    vt, ip = prof.load_vision_tower(str(tmp_path/'tiny'))
    ref = prof._tiny_visual(0)
    for k, v in ref.state_dict().items(): assert torch.equal(v, vt.state_dict()[k]), k
    assert ip.patch_size == 8 and ip.merge_size == 2
    (tmp_path/'tiny'/'model.safetensors').unlink()
    with pytest.raises(Exception, match='missing|model.safetensors'): prof.load_vision_tower(str(tmp_path/'tiny'))


def test_train_saves_reloads_and_reports(prof, run):
    rd, out = run
    assert 'detection: AUC' in out and 'localization: pixel-AUC' in out
    for p in ('checkpoints/epoch-1/optimizer.safetensors', 'best/model.safetensors', 'best/adapter/adapter_config.json',
              'best/merged_visual/config.json', 'final/detector.json', 'metrics.json', 'predictions.csv', 'history.csv'):
        assert (rd/p).is_file(), p
    m = json.loads((rd/'metrics.json').read_text())
    assert {'detection', 'identification', 'localization'} <= set(m) and m['localization']['n'] > 0
    assert len(pd.read_csv(rd/'history.csv')) == 2                                          # two epochs
    # reloaded (LoRA + heads) and merged-tower Profilers score the test split as the run did
    cfg = prof.load_config(prof.ProfilerRunConfig, rd/'config.yaml')
    tr = prof.ProfilerTrainer(cfg, resume=rd)
    pred = pd.read_csv(rd/'predictions.csv')
    lora = tr.predict(prof.load_profiler(rd)[0], 'test')
    merged = tr.predict(prof.load_profiler(rd, merged=True)[0], 'test')
    np.testing.assert_array_equal(lora['index'], pred['index'])
    np.testing.assert_allclose(lora['score'], pred.score, rtol=0, atol=1e-12)
    np.testing.assert_allclose(merged['score'], pred.score, atol=1e-4)
    prof.setup_logging()


def test_what_trains_is_what_is_saved(prof, run, tmp_path):
    "profiler-tiny trains (and saves) every tower weight; model.tower_training=lora keeps to LoRA matrices and heads."
    full = prof.load_safetensors(run[0]/'best'/'model.safetensors', 'w')
    assert any('patch_embed' in k for k in full) and any(k.startswith('heads.') for k in full)
    rc, o, e = run_cli('profile', 'train', '--config', 'profiler-tiny', f'run.out_dir={tmp_path}', 'run.name=lora',
                       'model.tower_training=lora', 'stage1_training.epochs=1', 'stage1_training.batch_size=64',
                       'stage1_training.eval_batch_size=128', '--mode', 'train')
    assert rc == 0, e
    saved = prof.load_safetensors(tmp_path/'lora'/'best'/'model.safetensors', 'w')
    assert saved and all('.lora_' in k or k.startswith('heads.') for k in saved)
    assert 'tower (LoRA)' in (tmp_path/'lora'/'run.log').read_text()
    rc, o, e = run_cli('profile', 'train', '--config', 'profiler-tiny', f'run.out_dir={tmp_path}',
                       'model.tower_training=everything', '--steps', '1')
    assert rc != 0 and "model.tower_training: must be one of ['lora', 'full'], got 'everything'" in e
    assert not (tmp_path/'profiler-tiny').exists()                   # refused before a run directory is made


def test_resume_continues_and_eval_repeats(prof, run):
    rd, _ = run
    rc, o, e = run_cli('profile', 'train', '--config', str(rd/'config.yaml'), '--resume', str(rd),
                       'stage1_training.epochs=3', '--mode', 'train', '--steps', '7')   # one step into epoch 3
    assert rc == 0, e
    hist = pd.read_csv(rd/'history.csv')
    assert hist.epoch.tolist() == [1, 2, 3] and (rd/'checkpoints'/'epoch-3').is_dir()
    state = json.loads((rd/'checkpoints'/'epoch-3'/'trainer_state.json').read_text())
    assert state['step'] == 7 and state['stopped']
    rc, o, e = run_cli('profile', 'eval', str(rd))
    assert rc == 0 and 'identification: top-1' in o, e


def test_infer_prints_the_stage1_block(run, tmp_path):
    from dflab.synth import benchmark_manifest
    rd, _ = run
    df = benchmark_manifest('tiny')
    masked = df[df['mask'].notna()]
    stem = Path(masked.path.iloc[0]).name                   # two images of one name in different folders
    twin = masked[masked.path.map(lambda p: Path(p).name == stem)].path.head(2)
    imgs = [str(Path(df.attrs['root'])/p) for p in (twin if len(twin) == 2 else masked.path.head(2))]
    rc, o, e = run_cli('infer', '--stage', 'profiling', *imgs, '--stage1-checkpoint', rd,
                       '--save-visualization', tmp_path/'vis', '--json', tmp_path/'r.jsonl')
    assert rc == 0, e
    assert o.count('Detection: ') == 2 and o.count('Generator ID: ') == 2 and o.count('[Heatmap saved]') == 2
    assert len(list((tmp_path/'vis').glob('*_heatmap.png'))) == 2
    assert len((tmp_path/'r.jsonl').read_text().splitlines()) == 2


@pytest.mark.parametrize('args,code,msg', [
    (('train', '--config', 'profiler-tiny', 'model.base_model=Qwen/Qwen2.5-VL-7B-Instruct'), 1, 'dflab is offline'),
    (('train', '--config', 'profiler-tiny', 'model.stage1_lora.rank=8'), 2, "unknown config key 'model.stage1_lora.rank'"),
    (('infer', '--stage', 'both', 'x.png', '--stage1-checkpoint', '.'), 1, 'needs the Stage 2 interpreter'),
    (('bench', 'profiler', '--arch', '7b', '--device', 'cpu'), 1, 'needs a GPU'),
    (('profile', 'eval', '/no/such/run'), 1, 'no run directory'),
    (('train', '--config', 'profiler-tiny', 'stage1_training.flip=1.5'), 2, 'stage1_training.flip: must be in [0, 1], got 1.5'),
])
def test_bad_inputs_fail_clearly(args, code, msg, tmp_path):
    rc, o, e = run_cli(*args, *(('run.out_dir=' + str(tmp_path),) if args[0] == 'train' else ()))
    assert rc == code and msg in e, (rc, e)


def test_bench_profiler_runs_the_tiny_model_on_cpu():
    rc, o, e = run_cli('bench', 'profiler', '--arch', 'tiny', '--device', 'cpu', '--steps', '1', '--batch-size', '2')
    assert rc == 0 and 's/step' in o and 'images/s' in o, e


def test_7b_architecture_counts_on_the_meta_device(prof):
    c = prof.arch_counts('7b')
    assert 8.2e9 < c['total'] < 8.4e9 and 0.66e9 < c['vision'] < 0.68e9
    assert c['stage1_lora'] == 32 * 16 * (1280 + 3840 + 1280 + 1280 + 3 * (1280 + 3420))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_7b_tower_trains_in_bf16_on_a_gpu(prof):
    r = prof.bench_profiler('7b', 'cuda', steps=2, batch_size=2, gradient_checkpointing=True)
    assert r['dtype'] == 'bfloat16' and r['step_s'] > 0
