"Caption pretraining of the tiny Qwen2.5-VL: `dflab pretrain qwen` writes a file that `base_model=tiny@FILE` loads everywhere, and bad files fail clearly."
import json
import pytest, torch
from safetensors.torch import load_file

pytestmark = pytest.mark.xdist_group('qwen')


@pytest.fixture(scope='module')
def prof():
    import dflab.qwen.profiler as prof
    return prof


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    "A file from a three-step `dflab pretrain qwen` run, and its record."
    from dflab.cli import run_cli
    out = tmp_path_factory.mktemp('qwen')/'q.safetensors'
    rc, o, e = run_cli('pretrain', 'qwen', '--steps', '3', '--contents', '8', '--heldout', '2', '--batch-size', '4',
                       '--threads', '1', '--out', out)
    assert rc == 0, e
    assert f'base_model=tiny@{out}' in o
    return out, json.loads(out.with_suffix('.json').read_text())


def test_the_record_describes_the_run(pretrained):
    out, rec = pretrained
    assert len(rec['loss']) == 3 and rec['corpus']['training_pairs'] == 16
    v = rec['vocabulary']
    assert v['used_tokens'] + v['redrawn_tokens'] == 1024 and 0 < v['used_tokens'] < 1024
    assert set(rec['heldout']) == {'random', 'pretrained'}


def test_tiny_at_file_loads_the_file_in_the_loaders_the_profiler_and_the_interpreter(prof, pretrained, tmp_path):
    out, _ = pretrained
    sd_file = {k: v.float() for k, v in load_file(str(out)).items()}
    model, _ = prof.load_qwen_vl(f'tiny@{out}')
    sd = model.state_dict()
    assert set(sd_file) == set(sd)
    for k, v in sd_file.items(): assert torch.equal(sd[k], v), k
    rand = prof.load_qwen_vl('tiny')[0].state_dict()                   # 'tiny' stays the seeded random model
    w = 'model.language_model.layers.0.self_attn.q_proj.weight'
    assert not torch.equal(rand[w], sd[w])
    vt, _ = prof.load_vision_tower(f'tiny@{out}')                       # the tower alone, as the Profiler loads it
    for k, v in vt.state_dict().items(): assert torch.equal(v, sd['model.visual.' + k]), k
    pm, _ = prof.build_profiler(prof.ProfilerModelConfig(base_model=f'tiny@{out}'), ['a', 'b'])
    pe = [p for n, p in pm.named_parameters() if n.endswith('patch_embed.proj.weight')]
    assert len(pe) == 1 and torch.equal(pe[0].detach(), sd['model.visual.patch_embed.proj.weight'])
    prof.save_tiny_qwen(tmp_path/'folder', source=f'tiny@{out}')        # the real folder format keeps the weights
    vf, _ = prof.load_vision_tower(str(tmp_path/'folder'))
    for k, v in vf.state_dict().items(): assert torch.equal(v, sd['model.visual.' + k]), k
    from dflab.qwen.interpreter import InterpreterModelConfig, build_interpreter
    im, _ = build_interpreter(InterpreterModelConfig(base_model=f'tiny@{out}'))
    emb = im.get_input_embeddings().weight                              # no random redraw over a pretrained base
    assert torch.equal(emb.detach(), sd['model.language_model.embed_tokens.weight'])


def test_bad_tiny_weights_fail_clearly(prof, tmp_path):
    with pytest.raises(prof.DflabError, match="'tiny@' names no file"): prof.load_qwen_vl('tiny@')
    with pytest.raises(prof.DflabError, match='not found.*pretrain qwen --out'):
        prof.load_qwen_vl(f'tiny@{tmp_path}/none.safetensors')
    from dflab.pretrain import WEIGHTS_DIR
    with pytest.raises(prof.DflabError, match='do not fit the tiny Qwen2.5-VL'):
        prof.load_vision_tower(f"tiny@{WEIGHTS_DIR/'dflab-tiny.safetensors'}")  # the tiny CLIP's weights
    (tmp_path/'junk.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(prof.DflabError, match='not a safetensors file'):
        prof.load_qwen_vl(f'tiny@{tmp_path}/junk.safetensors')
    from dflab.cli import run_cli
    rc, o, e = run_cli('pretrain', 'qwen', '--out', tmp_path/'x.bin', '--steps', '1')
    assert rc != 0 and '.safetensors' in o + e


def test_the_shipped_pretrained_tiny_qwen_is_the_recorded_reference_run(prof):
    "tiny@pretrained loads the file inside the package: the one its record describes (same sha256), vision and language."
    import hashlib
    p = prof.shipped_qwen()
    rec = json.loads(p.with_suffix('.json').read_text())
    assert hashlib.sha256(p.read_bytes()).hexdigest() == rec['sha256']
    assert rec['corpus']['namespace'] == 'dflab-pretrain' and rec['steps'] == rec['config']['steps']
    sd = {k: v.float() for k, v in load_file(str(p)).items()}
    model, _ = prof.load_qwen_vl('tiny@pretrained')
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    tower, _ = prof.load_vision_tower('tiny@pretrained')
    rnd, _ = prof.load_vision_tower('tiny')
    k = 'blocks.0.attn.qkv.weight'
    assert torch.equal(tower.state_dict()[k], sd['model.visual.' + k]) and not torch.equal(tower.state_dict()[k], rnd.state_dict()[k])
