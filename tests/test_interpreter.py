"""The Qwen2.5-VL Stage 2 Interpreter: assistant-only labels, LoRA on the language model only, the text metrics, the
DDVQA / M2F2-Det readers, and a Stage 1 -> Stage 2 -> `dflab infer --stage both` run on the tiny model."""
import dataclasses, json, math
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from dflab.cli import run_cli

pytestmark = pytest.mark.filterwarnings('ignore::FutureWarning')


@pytest.fixture(scope='module')
def I():
    torch.set_num_threads(1)
    import dflab.qwen.interpreter as I
    return I


@pytest.fixture(scope='module')
def man():
    from dflab.synth import benchmark_manifest
    return benchmark_manifest('tiny')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "A one-epoch Stage 1 run, then a 4-step Stage 2 debug run with Stage 1 and content evidence, both through `dflab train`."
    out = tmp_path_factory.mktemp('runs')
    rc, o, e = run_cli('train', '--config', 'profiler-tiny', f'run.out_dir={out}', 'stage1_training.epochs=1',
                       'stage1_training.batch_size=64', 'stage1_training.eval_batch_size=128')
    assert rc == 0, e
    s1 = out/'profiler-tiny'
    rc, o, e = run_cli('train', '--config', 'interpreter-tiny', '--debug', '--steps', '4', f'run.out_dir={out}',
                       f'model.stage1_checkpoint={s1}', 'stage2_training.evidence=true',
                       'stage2_training.content_evidence=true', 'generation.max_new_tokens=24')
    assert rc == 0, e
    return s1, out/'interpreter-tiny', o


def test_labels_cover_only_the_assistant_answer(I, man):
    _, proc = I.load_qwen_vl('tiny')
    rows = [int(np.flatnonzero(man.label == 0)[0]), int(np.flatnonzero(man.prompt.notna())[0]),
            int(np.flatnonzero(man['mask'].notna())[0])]
    ds = I.InterpreterSet(man, rows, evidence={r: ' Stage 1 evidence: detection fake (90%).' for r in rows})
    items = [ds[i] for i in range(3)]
    b = I.InterpreterCollate(proc)(items)
    tk = proc.tokenizer
    for i, it in enumerate(items):
        lab, ids = b['labels'][i], b['input_ids'][i]
        kept = lab != -100
        assert tk.decode(ids[kept]) == it['answer'] + '<|im_end|>'
        assert (lab[kept] == ids[kept]).all()
        first = int(kept.nonzero()[0])                        # everything before the answer is ignored ...
        prompt = tk.decode(ids[:first][b['attention_mask'][i][:first] == 1])
        assert prompt.endswith('<|im_start|>assistant\n') and 'Stage 1 evidence' in prompt
        assert not kept[int(kept.nonzero()[-1]) + 1:].any()   # ... and everything after its end marker
    assert (b['labels'][b['input_ids'] == proc.image_token_id] == -100).all()
    assert (b['labels'][b['attention_mask'] == 0] == -100).all()


def test_lora_trains_the_language_model_only_over_the_stage1_tower(I, tmp_path):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel as VT
    from dflab.qwen.profiler import _tiny_visual
    tower = _tiny_visual(0)
    with torch.no_grad():
        for p in tower.parameters(): p.add_(0.5)              # a "Stage 1" tower unlike the base one
    tower.save_pretrained(tmp_path/'merged_visual')
    model, _ = I.build_interpreter(I.InterpreterModelConfig(stage1_checkpoint=str(tmp_path)))
    vis = I.find_visual(model)
    for k, v in tower.state_dict().items(): assert torch.equal(vis.state_dict()[k], v), k
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trained) == 2 * 7 * 2 and all('.language_model.layers.' in n and '.lora_' in n for n in trained)
    assert not any(p.requires_grad for p in vis.parameters())
    with pytest.raises(I.DflabError, match='language model only'):
        I.add_language_lora(I.load_qwen_vl('tiny')[0], I.Stage2Lora(target_modules=r'.*blocks\.\d+\.mlp\.up_proj'))


def test_text_metrics_match_hand_computed_values(I):
    b = I.bleu(['a red ball on the left'], ['a red ball on the right'])
    assert np.allclose(b, [5 / 6, (2 / 3) ** .5, (1 / 2) ** (1 / 3), (1 / 3) ** .25])
    assert math.isclose(I.bleu(['a red ball'], [['a red ball on the left', 'a red ball']])[0], 1.0)  # closest ref
    assert math.isclose(I.rouge_l(['a red ball on the left'], ['a red ball on the right']), 5 / 6)
    assert math.isclose(I.cider(['red ball', 'blue box'], ['red ball', 'blue box']), 5.0)
    assert math.isclose(I.cider(['red box', 'blue box'], ['red ball', 'blue box']), 3.125)


def test_unparseable_judgements_count_as_wrong_and_slots_beat_nothing_for_free(I):
    j = I.judgement_metrics([1, 0, 1, 0], [1, 0, None, None])
    assert j['accuracy'] == 0.5 and j['unparseable_rate'] == 0.5 and math.isclose(j['f1'], 0.5)   # tp 1, fp 1, fn 1
    refs = ['a vivid photo of a red striped ball on the left, over a motorcycle', 'a blue box in the centre']
    acc = I.slot_accuracy(refs, [refs[0], 'I do not know'], I.majority_slots(['a red box in the centre']))
    assert acc.loc['style', 'accuracy'] == 1.0 and acc.loc['colour', 'accuracy'] == 0.5
    assert acc.loc['shape', 'majority'] == 0.5 and acc.loc['all', 'n'] == 7 + 5


def test_ddvqa_and_m2f2_files_are_read_and_scored(I, tmp_path):
    ref = [{'id': 'f1', 'image': 'f1.png', 'conversations': [
                {'from': 'human', 'value': '<image>\nIs the face in this image real or fake?'},
                {'from': 'gpt', 'value': 'The face is fake: the mouth region is blurred.'}]},
           {'id': 'r1', 'image': 'r1.png', 'conversations': [
                {'from': 'human', 'value': 'Is the face in this image real or fake?'},
                {'from': 'gpt', 'value': 'The face is real.'}]},
           {'id': 'r2', 'image': 'r2.png', 'label': 0, 'conversations': [
                {'from': 'human', 'value': 'Is this face manipulated?'}, {'from': 'gpt', 'value': 'No.'}]}]
    (tmp_path/'ddvqa.json').write_text(json.dumps(ref))
    pred = [{'question_id': 'f1', 'prompt': 'Is the face ... ?', 'text': 'The face is fake: the mouth region is blurred.'},
            {'question_id': 'r1', 'text': 'Yes, it has been manipulated.'},
            {'question_id': 'r2', 'text': 'I cannot tell.'}]
    (tmp_path/'m2f2.jsonl').write_text(''.join(json.dumps(p) + '\n' for p in pred))
    t = I.read_judgements(tmp_path/'ddvqa.json')
    assert t.id.tolist() == ['f1', 'r1', 'r2'] and t.label.tolist()[2] == 0 and t.text[1] == 'The face is real.'
    s = I.score_judgements(tmp_path/'m2f2.jsonl', tmp_path/'ddvqa.json')
    assert math.isclose(s['judgement']['accuracy'], 1 / 3) and math.isclose(s['judgement']['unparseable_rate'], 1 / 3)
    assert s['explanation']['n'] == 3 and 0 < s['explanation']['rouge_l'] < 1
    (tmp_path/'orphan.jsonl').write_text(json.dumps({'question_id': 'zz', 'text': 'fake'}) + '\n')
    with pytest.raises(I.DflabError, match='no reference'): I.score_judgements(tmp_path/'orphan.jsonl', tmp_path/'ddvqa.json')


def test_train_resume_test_and_reload(I, runs):
    s1, rd, out = runs
    assert 'judgement: accuracy' in out and 'consistency' in out
    for p in ('checkpoints/epoch-1/optimizer.safetensors', 'best/model.safetensors', 'best/detector.json',
              'best/adapter/adapter_config.json', 'best/merged_visual/model.safetensors', 'final/detector.json',
              'metrics.json', 'reports.csv', 'history.csv'):
        assert (rd/p).is_file(), p
    m = json.loads((rd/'metrics.json').read_text())
    assert m['evidence'] and m['constrained']['consistency']['rate'] == 1.0 and m['free']['judgement']['n'] == 105
    assert {'bleu4', 'rouge_l', 'cider'} <= set(m['free']['prompt']) and 'majority' in m['free']['slots']['all']
    # content evidence: the reader's prompts are kept, scored on their own, and fixed into the constrained reports
    assert m['content_evidence'] and m['reader_slots']['all']['n'] == m['free']['slots']['all']['n']
    rep = pd.read_csv(rd/'reports.csv')
    fake = rep.constrained_report.str.contains('AI-generated')
    assert fake.any() and all(f"3. Predicted Prompt: {r.content_evidence}\n" in r.constrained_report
                              for r in rep[fake].itertuples())
    assert m['constrained']['slots']['all']['accuracy'] > 0
    state = json.loads((rd/'checkpoints'/'epoch-1'/'trainer_state.json').read_text())
    assert state['step'] == 4 and state['stopped']
    rc, o, e = run_cli('train', '--config', str(rd/'config.yaml'), '--resume', str(rd), '--mode', 'train', '--steps', '4')
    assert rc == 0, e                                        # already complete: nothing more is trained
    assert json.loads((rd/'checkpoints'/'epoch-1'/'trainer_state.json').read_text())['step'] == 4
    model, _, meta = I.load_interpreter(rd)
    saved = I.load_safetensors(rd/'best'/'model.safetensors')
    for k, v in I.lora_state(model).items(): assert torch.equal(v, saved[k]), k


def test_infer_both_prints_both_blocks_and_json(I, runs, man, tmp_path):
    s1, rd, _ = runs
    imgs = [str(Path(man.attrs['root'])/man.path[i]) for i in (0, int(np.flatnonzero(man['mask'].notna())[0]))]
    rc, o, e = run_cli('infer', '--stage', 'both', *imgs, '--stage1-checkpoint', s1, '--stage2-checkpoint', rd,
                       '--json', tmp_path/'r.jsonl')
    assert rc == 0, e
    assert o.count('Detection: ') == 2 and o.count('Analysis Result:\n1. Authenticity: ') == 2
    recs = [json.loads(l) for l in (tmp_path/'r.jsonl').read_text().splitlines()]
    assert len(recs) == 2 and all(r['consistent'] and r['constrained'] and 'stage1' in r for r in recs)
    assert all(r['content_evidence'].startswith('a ') and ', over ' in r['content_evidence'] for r in recs)
    for r in recs:       # constrained reports are written from Stage 1's decisions: the closing sentence names its generator
        assert I.parse_report(r['report'])['closing_generator'] == (r['stage1']['generator'] if r['stage1']['fake'] else None)
    rc, o2, e = run_cli('infer', '--stage', 'profiling', *imgs, '--stage1-checkpoint', s1)
    assert rc == 0 and 'Analysis Result' not in o2 and o2.count('Detection: ') == 2, e
    rc, o, e = run_cli('infer', '--stage', 'interpreting', *imgs, '--stage2-checkpoint', rd)
    assert rc == 1 and 'trained with Stage 1 evidence' in e


@pytest.mark.parametrize('args,code,msg', [
    (('train', '--config', 'interpreter-tiny', 'stage2_training.evidence=true'), 2, 'needs Stage 1'),
    (('train', '--config', 'interpreter-tiny', 'model.freeze_vision=false'), 2, 'freeze_vision must be true'),
    (('train', '--config', 'interpreter-tiny', 'stage2_training.content_evidence=true', 'stage2_training.clip_backbone=null'),
     2, 'set stage2_training.clip_backbone'),
    (('train', '--config', 'interpreter-tiny', 'stage2_training.monitor=meteor'), 2, 'monitor must be one of'),
    (('infer', '--stage', 'interpreting', 'x.png'), 1, 'needs the Stage 2 interpreter'),
    (('bench', 'interpreter', '--arch', '7b', '--device', 'cpu'), 1, 'needs a GPU'),
    (('run', 'interpreter', '--no-preset', '--quiet', '-p', 'variants', '[evidence, content]'), 1,
     "variants must be some of ['no evidence', 'evidence', 'evidence + content']"),
    (('run', 'interpreter', '--no-preset', '--quiet', '-p', 'stage1', 'no-such-run'), 1, 'is not a trained Profiler run'),
])
def test_bad_inputs_fail_clearly(args, code, msg, tmp_path):
    rc, o, e = run_cli(*args, *(('run.out_dir=' + str(tmp_path),) if args[0] == 'train' else ()))
    assert rc == code and msg in e, (rc, e)


def test_prompt_reader_reads_a_prompts_own_embedding_back(I):
    "Given a caption's own text embedding as the image feature, the reader must return that caption, every slot right."
    from dflab.backbones import load_backbone
    from dflab.synth import GRAMMAR
    clip = load_backbone('openclip:dflab-tiny')
    reader, ascent = I.PromptReader(clip), I.PromptReader(clip, rounds=2)
    rng = np.random.default_rng(0)
    truth = [{k: str(rng.choice(v)) for k, v in reader.values.items()} for _ in range(6)]
    prompts = [I.grammar_prompt(t) for t in truth]
    feats = reader.embed(prompts)
    one, more = reader.prompts(feats), ascent.prompts(feats)
    sim = lambda ps: (feats * reader.embed(ps)).sum(-1)
    assert (sim(more) >= sim(one) - 1e-6).all()              # re-reading in context never lowers the match
    right = lambda got: sum(g[k] == t[k] for g, t in zip(got, truth) for k in t)
    got = reader.read(feats)                                  # one reading per slot: well above the 1/19 .. 1/5 of chance
    assert right(got) >= 0.4 * 6 * len(truth)
    assert right(ascent.read(feats)) >= max(right(got) + 3, 0.6 * 6 * len(truth))   # and re-reading gets more right
    assert any(a == b for a, b in zip(more, prompts))
    assert all(I.prompt_slots(p)['objects'][0]['colour'] == t['colour'] for p, t in zip(prompts, truth))
    assert len(reader.image_features([])) == 0
    with pytest.raises(I.DflabError, match=r"image features \(N, 64\)"): reader.read(torch.zeros(2, 32))
    with pytest.raises(I.DflabError, match='text tower'):
        I.PromptReader(dataclasses.replace(clip, make_tokenizer=None))


def test_accelerate_deepspeed_configs_read_back(I):
    from dflab.train import configs_dir
    got = {p.name: I.check_accelerate_config(p) for p in sorted((configs_dir()/'accelerate').glob('zero*.yaml'))}
    assert [g['zero_stage'] for g in got.values()] == [2, 3] and all(g['mixed_precision'] == 'bf16' for g in got.values())


def test_7b_stage2_lora_counts_on_the_meta_device(I):
    c = I.stage2_counts('7b')
    assert 8.2e9 < c['total'] < 8.4e9 and c['stage2_lora'] == I.arch_counts('7b')['stage2_lora']
    assert 35e6 < c['stage2_lora'] < 45e6                        # r 16 on 28 layers' q/k/v/o and MLP
