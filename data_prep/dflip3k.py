"""Build the DFLIP-3K manifest (and DFLIP's own dflip3k_meta.json).

Expected download layout (seed dflip-linguistic-profiling.md, "Prepare Dataset"):

    <root>/
      real/images/*.jpg|png|...
      fake/<generator>/images/*          e.g. fake/stable-diffusion-v1.5/images/0001.png
      fake/<generator>/prompts.txt       one prompt per line (sorted image order) or name<TAB>prompt
      fake/<generator>/masks/<stem>.png  optional forgery masks

    python data_prep/dflip3k.py --root /data/dflip3k --out manifests/dflip3k.parquet --meta assets/dflip3k_meta.json
"""
from _common import parser, build

if __name__ == '__main__':
    p = parser(__doc__)
    p.add_argument('--family-map', help='JSON/YAML generator -> family (default: name without version suffix)')
    p.add_argument('--meta', help="also write DFLIP's dflip3k_meta.json here")
    a = p.parse_args()
    df = build(a, 'dflip3k', family_map=a.family_map)
    if a.meta:
        from dflab.data.manifest import write_dflip_meta
        print(f"wrote {write_dflip_meta(df, a.meta)}")
