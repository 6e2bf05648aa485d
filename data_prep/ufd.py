"""Build a UniversalFakeDetect / ForenSynths (CNNDetection) manifest.

Expected download layout (Wang et al. CVPR 2020; Ojha et al. CVPR 2023); <root> is one of:

    progan_train/<category>/0_real|1_fake/*          20 LSUN categories: airplane ... tvmonitor
    CNN_synth_testset/<generator>/[<category>/]0_real|1_fake/*
    diffusion_datasets/<generator>/1_fake/*, diffusion_datasets/laion/0_real/*

    python data_prep/ufd.py --root /data/CNN_synth_testset --out manifests/ufd_test.parquet
    python data_prep/ufd.py --root /data/progan_train --generator progan --out manifests/progan_train.parquet
    dflab data split --manifest manifests/progan_train.parquet --protocol category --train car,cat,chair,horse --out manifests/ufd_4class.parquet
"""
from _common import parser, build

if __name__ == '__main__':
    p = parser(__doc__)
    p.add_argument('--generator', help='generator of the fakes when the tree has no generator folder (default: the root folder name)')
    a = p.parse_args()
    build(a, 'forensynths', generator=a.generator)
