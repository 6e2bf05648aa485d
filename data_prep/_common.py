"Shared argument handling for the data_prep scripts: each is a thin call into `dflab.data`."
import argparse, sys
from pathlib import Path

def parser(doc:str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0], epilog=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', required=True, type=Path, help='where the dataset was downloaded (see the layout below)')
    p.add_argument('--out', required=True, type=Path, help='the manifest to write (.parquet)')
    p.add_argument('--no-validate', action='store_true', help='skip opening every image (fast, but no sha256/size/format)')
    p.add_argument('--skip-bad', action='store_true', help='write bad files to <out stem>.rejected.csv instead of failing')
    p.add_argument('--workers', type=int, help='validation worker processes (default: all cores)')
    return p

def build(args, layout:str, **opts):
    "Run `dflab.data.validate.build_dataset` and print the summary (or the bad-file summary and exit 1)."
    from dflab.data.manifest import summarize
    from dflab.data.validate import BadFilesError, build_dataset
    try: df = build_dataset(layout, args.root, args.out, validate_images=not args.no_validate, skip_bad=args.skip_bad,
                            workers=args.workers, **opts)
    except BadFilesError as e:
        print(e.summary, file=sys.stderr); print(f"error: {e}", file=sys.stderr); sys.exit(1)
    print(summarize(df)); print(f"wrote {args.out}")
    return df
