"""Build the DF40 manifest (seed clip-lare-fusion.md), keeping each frame's video id for video-level splits.

Expected download layout (https://github.com/YZY-stack/DF40):

    <root>/<method>/ff/<video>/<frame>.png       e.g. simswap/ff/000_003/012.png
    <root>/<method>/cdf/<video>/<frame>.png      Celeb-DF based subsets
    <root>/<method>/ff/frames/<video>/<frame>    (a frames/ level is allowed)
    <root>/real/ff/<video>/<frame>.png           real frames, under a method named in --real-methods

    python data_prep/df40.py --root /data/DF40 --out manifests/df40.parquet
    dflab data split --manifest manifests/df40.parquet --protocol video --test-size 0.2 --out manifests/df40_split.parquet
"""
from _common import parser, build

if __name__ == '__main__':
    p = parser(__doc__)
    p.add_argument('--real-methods', default='real,original,youtube,celeb-real,youtube-real', help='method folders holding real frames')
    a = p.parse_args()
    build(a, 'df40', real_methods=a.real_methods)
