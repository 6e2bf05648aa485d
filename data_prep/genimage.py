"""Build the GenImage manifest (Zhu et al., NeurIPS 2023); the train/val split is kept in `split`.

Expected download layout (after unpacking the per-generator archives):

    <root>/<generator>/[<subset>/]train/ai/*       e.g. ADM/imagenet_ai_0508_adm/train/ai/xxx.PNG
    <root>/<generator>/[<subset>/]train/nature/*
    <root>/<generator>/[<subset>/]val/ai/*
    <root>/<generator>/[<subset>/]val/nature/*

    python data_prep/genimage.py --root /data/GenImage --out manifests/genimage.parquet
"""
from _common import parser, build

if __name__ == '__main__':
    a = parser(__doc__).parse_args()
    build(a, 'genimage')
