"""Build the FaceForensics++ manifest, from M2F2-Det's HDF5 files or from extracted class folders.

Expected download layout, HDF5 (seed m2f2-det.md; the inner keys are not published, name yours with --images-key/--labels-key):

    <root>/FF++_Deepfakes_c23.h5   datasets: images (N,H,W,3 uint8 or N encoded bytes), labels (N,), optional videos (N,)
    <root>/FF++_Face2Face_c40.h5
    ...                            frames are written once as PNG under --frames (default <root>/frames)

Class folders (seed clip-deepfake-detection.md):

    <root>/Real_youtube/*.png  <root>/FaceSwap/*.png  <root>/NeuralTextures/*.png  ...

    python data_prep/ffpp.py --root /data/ffpp_h5 --out manifests/ffpp.parquet
    python data_prep/ffpp.py --root /data/ffpp_faces --folders --real-classes Real_youtube --out manifests/ffpp.parquet
"""
from _common import parser, build

if __name__ == '__main__':
    p = parser(__doc__)
    p.add_argument('--folders', action='store_true', help='read class folders instead of HDF5 files')
    p.add_argument('--real-classes', default='Real_youtube', help='class folders holding real faces')
    p.add_argument('--images-key', default='images'); p.add_argument('--labels-key', default='labels')
    p.add_argument('--videos-key', default='videos'); p.add_argument('--frames', help='where HDF5 frames are extracted')
    a = p.parse_args()
    if a.folders: build(a, 'class-folders', real_classes=a.real_classes)
    else: build(a, 'ffpp-h5', frames=a.frames, images_key=a.images_key, labels_key=a.labels_key, videos_key=a.videos_key)
