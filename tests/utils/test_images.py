"""The one image reader: what a person sees (EXIF orientation, transparency over white), for every reader."""
import io

import numpy as np
from PIL import Image

from edgevit.utils.images import decode_image, read_image


def _portrait_stored_as_landscape(path):
    """A phone's portrait photo: landscape pixels plus EXIF orientation 6 (rotate 90 degrees clockwise to show);
    the top row of the picture as shown is red."""
    shown = np.zeros((40, 20, 3), np.uint8)  # 40 high, 20 wide
    shown[:4] = (255, 0, 0)
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: 20 x 40
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif.tobytes())
    return shown


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "photo.jpg"
    shown = _portrait_stored_as_landscape(path)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)  # stored landscape
    img = np.asarray(read_image(path))
    assert img.shape == shown.shape  # read as shown: portrait
    assert img[:4, :, 0].mean() > 200 and img[-4:, :, 0].mean() < 60  # red on top, as shown


def test_strokes_carried_by_alpha_stay_visible(tmp_path):
    """RGB all black, the stroke only in alpha: composited on white, the stroke is black on white (a plain
    convert('RGB') would make the whole image black)."""
    a = np.zeros((16, 16), np.uint8)
    a[4:12, 7:9] = 255
    rgba = np.dstack([np.zeros((16, 16, 3), np.uint8), a])
    path = tmp_path / "stroke.png"
    Image.fromarray(rgba, "RGBA").save(path)
    img = np.asarray(read_image(path))
    assert img[8, 8].tolist() == [0, 0, 0] and img[0, 0].tolist() == [255, 255, 255]
    la = Image.fromarray(np.dstack([np.zeros((16, 16), np.uint8), a]), "LA")
    buf = io.BytesIO()
    la.save(buf, format="PNG")
    buf.seek(0)
    assert np.asarray(decode_image(buf, "la")).tolist() == img.tolist()  # the same for grey + alpha


def test_annotated_images_keep_the_grid_their_annotations_were_made_on(tmp_path):
    from edgevit.utils.images import read_image_for

    path = tmp_path / "photo.jpg"
    _portrait_stored_as_landscape(path)
    assert read_image_for(path, (20, 40)).size == (20, 40)  # annotations on the picture as shown
    assert read_image_for(path, (40, 20)).size == (40, 20)  # COCO-style: on the stored pixels
