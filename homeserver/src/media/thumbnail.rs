//! Thumbnails of PNG, JPEG, GIF and WebP images (Client-Server API §Thumbnails).
//!
//! `scale` keeps the aspect ratio and fits the image inside the requested box; `crop` fills the
//! box exactly and cuts off what sticks out, centred. Images are never scaled up: content smaller
//! than the box keeps its size (a JPEG, or any image when `animated=true`, is then returned as
//! it is; other formats are re-encoded so that an animated original is never returned unasked).
//! JPEG sources give JPEG thumbnails, everything else PNG (keeps transparency).

use std::io::Cursor;

use image::{
    DynamicImage, ImageFormat, ImageReader, Limits, codecs::jpeg::JpegEncoder, imageops::FilterType,
};

use crate::{
    config::ThumbnailSize,
    error::{Error, Result},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "crop" => Some(Self::Crop),
            "scale" => Some(Self::Scale),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crop => "crop",
            Self::Scale => "scale",
        }
    }
}

/// What a client asked for.
#[derive(Debug, Clone)]
pub struct ThumbnailRequest {
    pub width: u32,
    pub height: u32,
    pub method: Method,
    pub animated: bool,
}

impl ThumbnailRequest {
    /// The file name of this thumbnail in the cache.
    pub fn cache_name(&self, output: Output) -> String {
        format!(
            "{}x{}-{}.{}",
            self.width,
            self.height,
            self.method.as_str(),
            output.extension()
        )
    }
}

/// The configured size that answers `req`: of the sizes with its method (all sizes when none
/// has it), the smallest that covers the requested box, else the largest. Like Synapse, so a
/// client gets at least what it asked for when it can, and never a size nobody configured.
pub fn nearest_size(sizes: &[ThumbnailSize], req: ThumbnailRequest) -> ThumbnailRequest {
    let same_method: Vec<&ThumbnailSize> = sizes.iter().filter(|s| s.method == req.method).collect();
    let pool = if same_method.is_empty() {
        sizes.iter().collect()
    } else {
        same_method
    };
    let area = |s: &&&ThumbnailSize| u64::from(s.width) * u64::from(s.height);
    let chosen = pool
        .iter()
        .filter(|s| s.width >= req.width && s.height >= req.height)
        .min_by_key(area)
        .or_else(|| pool.iter().max_by_key(area));
    match chosen {
        Some(s) => ThumbnailRequest {
            width: s.width,
            height: s.height,
            method: s.method,
            animated: req.animated,
        },
        None => req,
    }
}

/// The encoding of generated thumbnails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Png,
    Jpeg,
}

impl Output {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
        }
    }
}

fn source_format(content_type: &str) -> Option<ImageFormat> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "image/png" | "image/apng" => Some(ImageFormat::Png),
        "image/jpeg" | "image/jpg" => Some(ImageFormat::Jpeg),
        "image/gif" => Some(ImageFormat::Gif),
        "image/webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

/// The thumbnail encoding for content of this type; `None` when it cannot be thumbnailed.
pub fn output_format(content_type: &str) -> Option<Output> {
    source_format(content_type).map(|f| match f {
        ImageFormat::Jpeg => Output::Jpeg,
        _ => Output::Png,
    })
}

pub fn cannot_thumbnail() -> Error {
    Error::unknown("Cannot generate thumbnails for the requested content")
}

fn too_large_to_thumbnail() -> Error {
    Error::too_large("Content is too large to thumbnail")
}

/// What `generate` made.
#[derive(Debug)]
pub enum Generated {
    /// Serve the original content: it is small enough already.
    Original,
    /// An encoded thumbnail, in the `Output` of the source type.
    Image(Vec<u8>),
}

/// Makes a thumbnail of `bytes` (of `content_type`). CPU-bound: call it off the async runtime.
pub fn generate(
    bytes: &[u8],
    content_type: &str,
    req: &ThumbnailRequest,
    max_pixels: u64,
) -> Result<Generated> {
    let format = source_format(content_type).ok_or_else(cannot_thumbnail)?;
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|_| cannot_thumbnail())?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(too_large_to_thumbnail());
    }
    let fits = width <= req.width && height <= req.height;
    if fits && (format == ImageFormat::Jpeg || req.animated) {
        return Ok(Generated::Original);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(64 * 1024 * 1024));
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => too_large_to_thumbnail(),
        _ => cannot_thumbnail(),
    })?;
    let thumb = resize(image, req);
    encode(thumb, output_format(content_type).unwrap_or(Output::Png)).map(Generated::Image)
}

/// Applies the method to the decoded image, never enlarging it.
fn resize(image: DynamicImage, req: &ThumbnailRequest) -> DynamicImage {
    let (w, h) = (image.width(), image.height());
    if w <= req.width && h <= req.height {
        return image;
    }
    let filter = FilterType::Triangle;
    match req.method {
        // `resize` keeps the aspect ratio and fits inside the box.
        Method::Scale => image.resize(req.width, req.height, filter),
        Method::Crop => {
            let factor = f64::max(
                f64::from(req.width) / f64::from(w),
                f64::from(req.height) / f64::from(h),
            );
            if factor < 1.0 {
                // Scale down until the box is covered, then cut the middle out.
                image.resize_to_fill(req.width, req.height, filter)
            } else {
                // One side is already smaller than asked: cut the middle, scale nothing.
                let (cw, ch) = (req.width.min(w), req.height.min(h));
                image.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch)
            }
        }
    }
}

fn encode(image: DynamicImage, output: Output) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    match output {
        Output::Png => image.write_to(&mut out, ImageFormat::Png),
        Output::Jpeg => {
            let rgb = DynamicImage::ImageRgb8(image.to_rgb8());
            rgb.write_with_encoder(JpegEncoder::new_with_quality(&mut out, 80))
        }
    }
    .map_err(|e| Error::internal(format!("encoding a thumbnail: {e}")))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn dims(bytes: &[u8]) -> (u32, u32) {
        let img = image::load_from_memory(bytes).unwrap();
        (img.width(), img.height())
    }

    fn req(width: u32, height: u32, method: Method) -> ThumbnailRequest {
        ThumbnailRequest {
            width,
            height,
            method,
            animated: false,
        }
    }

    fn made(bytes: &[u8], r: ThumbnailRequest) -> (u32, u32) {
        match generate(bytes, "image/png", &r, 1_000_000).unwrap() {
            Generated::Image(b) => dims(&b),
            Generated::Original => panic!("expected a new image"),
        }
    }

    #[test]
    fn scale_keeps_the_aspect_ratio_inside_the_box() {
        let src = png(640, 320);
        assert_eq!(made(&src, req(320, 240, Method::Scale)), (320, 160));
        assert_eq!(made(&src, req(100, 100, Method::Scale)), (100, 50));
    }

    #[test]
    fn crop_fills_the_box_exactly() {
        let src = png(640, 320);
        assert_eq!(made(&src, req(32, 32, Method::Crop)), (32, 32));
        assert_eq!(made(&src, req(96, 40, Method::Crop)), (96, 40));
    }

    #[test]
    fn nothing_is_scaled_up() {
        let src = png(20, 10);
        assert_eq!(made(&src, req(320, 240, Method::Scale)), (20, 10));
        assert_eq!(made(&src, req(32, 32, Method::Crop)), (20, 10));
        // One side smaller than asked: the middle is cut, not enlarged.
        assert_eq!(made(&png(100, 20), req(50, 50, Method::Crop)), (50, 20));
    }

    #[test]
    fn an_animated_gif_gives_a_static_png() {
        let frames = (0..3u8).map(|i| {
            let buf = image::RgbaImage::from_pixel(200, 100, image::Rgba([i * 80, 0, 0, 255]));
            image::Frame::new(buf)
        });
        let mut gif = Vec::new();
        {
            let mut encoder = image::codecs::gif::GifEncoder::new(&mut gif);
            encoder.set_repeat(image::codecs::gif::Repeat::Infinite).unwrap();
            encoder.encode_frames(frames).unwrap();
        }
        let out = match generate(&gif, "image/gif", &req(50, 50, Method::Crop), 1_000_000).unwrap() {
            Generated::Image(b) => b,
            Generated::Original => panic!("expected a new image"),
        };
        assert_eq!(image::guess_format(&out).unwrap(), ImageFormat::Png);
        assert_eq!(dims(&out), (50, 50));
        // Small enough already: returned as uploaded only when animation is welcome.
        let small = ThumbnailRequest {
            animated: true,
            ..req(400, 400, Method::Scale)
        };
        assert!(matches!(
            generate(&gif, "image/gif", &small, 1_000_000).unwrap(),
            Generated::Original
        ));
        match generate(&gif, "image/gif", &req(400, 400, Method::Scale), 1_000_000).unwrap() {
            Generated::Image(b) => assert_eq!(image::guess_format(&b).unwrap(), ImageFormat::Png),
            Generated::Original => panic!("an animated original must not be returned unasked"),
        }
    }

    #[test]
    fn requests_get_the_nearest_larger_configured_size() {
        let sizes = crate::config::MediaConfig::default().thumbnail_sizes;
        let pick = |w, h, m| {
            let r = nearest_size(&sizes, req(w, h, m));
            (r.width, r.height, r.method)
        };
        assert_eq!(pick(32, 32, Method::Crop), (32, 32, Method::Crop));
        assert_eq!(pick(33, 20, Method::Crop), (96, 96, Method::Crop));
        assert_eq!(
            pick(97, 40, Method::Crop),
            (96, 96, Method::Crop),
            "larger than all crops"
        );
        assert_eq!(pick(1, 1, Method::Scale), (320, 240, Method::Scale));
        assert_eq!(pick(321, 100, Method::Scale), (640, 480, Method::Scale));
        assert_eq!(pick(5000, 5000, Method::Scale), (800, 600, Method::Scale));
        let only_scale = [ThumbnailSize {
            width: 100,
            height: 100,
            method: Method::Scale,
        }];
        let r = nearest_size(&only_scale, req(10, 10, Method::Crop));
        assert_eq!((r.width, r.height, r.method), (100, 100, Method::Scale));
    }

    #[test]
    fn bad_content_is_refused() {
        let e = generate(
            b"not an image",
            "image/png",
            &req(10, 10, Method::Crop),
            1_000_000,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Unknown(_)), "{e:?}");
        let e = generate(&png(10, 10), "text/plain", &req(10, 10, Method::Crop), 1_000_000).unwrap_err();
        assert!(matches!(e, Error::Unknown(_)), "{e:?}");
        let e = generate(&png(100, 100), "image/png", &req(10, 10, Method::Crop), 9_999).unwrap_err();
        assert!(matches!(e, Error::TooLarge(_)), "{e:?}");
    }
}
