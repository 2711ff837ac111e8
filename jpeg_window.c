/* jpeg_window.c: decode one (y, x, h, w) window of a JPEG the way TensorFlow's
 * tf.image.decode_and_crop_jpeg does (tensorflow/core/lib/jpeg/jpeg_mem.cc, UncompressLow
 * with crop): libjpeg(-turbo), RGB out, JDCT_IFAST, fancy upsampling, jpeg_crop_scanline
 * for the columns, jpeg_skip_scanlines to y, rows read one at a time. Same library calls,
 * so the same pixels, including the window-edge upsampling that makes a cropped decode
 * differ from decode-then-slice. Unlike TF we stop after the window's last row instead of
 * entropy-decoding the rest of the file: that is most of the speed (the one behavioural
 * difference: a file damaged below the window, which TF rejects, decodes here). The whole
 * image is the window (0, 0, H, W), which is tf.io.decode_jpeg(channels=3).
 * Built by jpeg_window.py (the one place that holds the compiler command). */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

#define JW_OK 0
#define JW_EDATA -1   /* libjpeg rejected the bytes: jpeg_window_last_error() says why */
#define JW_EWINDOW -2 /* the window is empty or not inside the image */
#define JW_EARGS -3   /* NULL pointer, no bytes, or out_stride < 3 * w */
/* Row-buffer offset from 32-byte alignment: libjpeg-turbo's SIMD colour converters use
 * non-temporal stores on aligned rows, slower when the row is read again at once. */
#ifndef JW_ROW_SKEW
#define JW_ROW_SKEW 8
#endif

struct jw_error { struct jpeg_error_mgr pub; jmp_buf jump; };
static __thread char last_error[JMSG_LENGTH_MAX];

static void jw_error_exit(j_common_ptr c) {
  (*c->err->format_message)(c, last_error);
  longjmp(((struct jw_error *)c->err)->jump, 1);
}
/* Warnings (e.g. "extraneous bytes before marker") are ignored, as TF ignores them. */
static void jw_emit_message(j_common_ptr c, int level) { (void)c; (void)level; }
/* Running out of bytes is an error (TF, try_recover_truncated=False), never gray padding. */
static boolean jw_fill_input(j_decompress_ptr c) { ERREXIT(c, JERR_INPUT_EOF); return FALSE; }

const char *jpeg_window_last_error(void) { return last_error; }

/* Read the header and prepare cinfo; the caller has set up the error manager. */
static void jw_open(j_decompress_ptr c, const uint8_t *data, size_t size) {
  jpeg_create_decompress(c);
  jpeg_mem_src(c, (unsigned char *)data, (unsigned long)size);
  c->src->fill_input_buffer = jw_fill_input;
  jpeg_read_header(c, TRUE);
}

static void jw_init_error(struct jw_error *err, j_decompress_ptr c) {
  memset(c, 0, sizeof(*c)); /* so that an error inside jpeg_create_decompress is safe */
  c->err = jpeg_std_error(&err->pub);
  err->pub.error_exit = jw_error_exit;
  err->pub.emit_message = jw_emit_message;
  last_error[0] = 0;
}

int jpeg_window_header(const uint8_t *data, size_t size, int32_t *hw) {
  struct jpeg_decompress_struct cinfo;
  struct jw_error err;
  if (!data || !size || !hw) return JW_EARGS;
  jw_init_error(&err, &cinfo);
  if (setjmp(err.jump)) { jpeg_destroy_decompress(&cinfo); return JW_EDATA; }
  jw_open(&cinfo, data, size);
  hw[0] = (int32_t)cinfo.image_height;
  hw[1] = (int32_t)cinfo.image_width;
  jpeg_destroy_decompress(&cinfo);
  return JW_OK;
}

/* Decode rows [y, y + h) x columns [x, x + w) into out (h rows of out_stride bytes, RGB). */
int jpeg_window_decode(const uint8_t *data, size_t size, int y, int x, int h, int w,
                       uint8_t *out, int out_stride) {
  struct jpeg_decompress_struct cinfo;
  struct jw_error err;
  JDIMENSION xoff = (JDIMENSION)x, cw = (JDIMENSION)w;
  JSAMPROW row;
  int cmyk, nc, i, j;
  if (!data || !size || !out || w <= 0 || out_stride < 3 * w) return JW_EARGS;
  jw_init_error(&err, &cinfo);
  if (setjmp(err.jump)) { jpeg_destroy_decompress(&cinfo); return JW_EDATA; }
  jw_open(&cinfo, data, size);
  if (h <= 0 || y < 0 || x < 0 || (long)y + h > (long)cinfo.image_height ||
      (long)x + w > (long)cinfo.image_width) {
    jpeg_destroy_decompress(&cinfo);
    return JW_EWINDOW;
  }
  /* TF: CMYK/YCCK decode to CMYK, converted below; everything else (grayscale included,
   * which libjpeg replicates) straight to RGB. */
  cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  cinfo.do_fancy_upsampling = TRUE;
  cinfo.dct_method = JDCT_IFAST;
  jpeg_start_decompress(&cinfo);
  jpeg_crop_scanline(&cinfo, &xoff, &cw); /* xoff moves left to an iMCU boundary */
  if (y > 0 && jpeg_skip_scanlines(&cinfo, (JDIMENSION)y) != (JDIMENSION)y)
    ERREXIT(&cinfo, JERR_INPUT_EOF);
  nc = cinfo.output_components;
  row = (*cinfo.mem->alloc_small)((j_common_ptr)&cinfo, JPOOL_IMAGE,
                                  (size_t)cinfo.output_width * nc + 64);
  row = (JSAMPROW)(((uintptr_t)row + 31) & ~(uintptr_t)31) + JW_ROW_SKEW;
  for (i = 0; i < h; i++) {
    const JSAMPLE *src;
    uint8_t *dst = out + (size_t)i * out_stride;
    if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) ERREXIT(&cinfo, JERR_INPUT_EOF);
    src = row + (size_t)(x - (int)xoff) * nc;
    if (!cmyk) { memcpy(dst, src, (size_t)w * 3); continue; }
    for (j = 0; j < w; j++, src += 4, dst += 3) {  /* TF's CMYK -> RGB, jpeg_mem.cc */
      int c = src[0], m = src[1], ye = src[2], k = src[3];
      if (cinfo.saw_Adobe_marker) {
        dst[0] = k * c / 255; dst[1] = k * m / 255; dst[2] = k * ye / 255;
      } else {
        dst[0] = (255 - k) * (255 - c) / 255; dst[1] = (255 - k) * (255 - m) / 255;
        dst[2] = (255 - k) * (255 - ye) / 255;
      }
    }
  }
  jpeg_destroy_decompress(&cinfo); /* the rows below the window are never decoded */
  return JW_OK;
}
