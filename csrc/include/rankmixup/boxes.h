// CutMix geometry shared by the CPU and CUDA kernels: a box, and where an element of an image lies.
// Torch-free, host and device.
//
// The paste kernels see every image (one of B or K*B) as N = C*H*W elements dense in one of two
// orders, contiguous (C, H, W) or channels-last (H, W, C), and x and its result in the same
// order, so an element's offset within its image is the same in both. Its pixel row is
// offset / row_stride % H and its column offset / col_stride % W, where row_stride and
// col_stride are the strides of H and W in that order: (W, 1) contiguous, (W*C, C) channels-last.
#pragma once

#include <cstdint>

#include "rankmixup/host_device.h"

namespace rankmixup {

// Rows [top, bottom) and columns [left, right) of an image; any values (a box need not lie in
// the image: only its part inside it is pasted).
struct Box {
  int64_t top, bottom, left, right;

  RANKMIXUP_HD bool has_row(int64_t row) const { return top <= row && row < bottom; }
  RANKMIXUP_HD bool contains(int64_t row, int64_t col) const { return has_row(row) && left <= col && col < right; }
};

RANKMIXUP_HD int64_t clamp_to(int64_t value, int64_t low, int64_t high) {
  return value < low ? low : (value > high ? high : value);
}

// The part of `box` inside a height x width image, with top <= bottom and left <= right, so that
// an empty box spans nothing (what a kernel that copies runs of columns needs).
RANKMIXUP_HD Box clip_to_image(const Box& box, int64_t height, int64_t width) {
  const int64_t top = clamp_to(box.top, 0, height), left = clamp_to(box.left, 0, width);
  return {top, clamp_to(box.bottom, top, height), left, clamp_to(box.right, left, width)};
}

// boxes (K, B, 4) int64 of any strides, (top, bottom, left, right) along the last dimension.
struct BoxMatrix {
  const int64_t* data;
  int64_t stride_k, stride_b, stride_side;

  RANKMIXUP_HD Box operator()(int64_t k, int64_t b) const {
    const int64_t* box = data + k * stride_k + b * stride_b;
    return {box[0], box[stride_side], box[2 * stride_side], box[3 * stride_side]};
  }
};

struct ImageLayout {
  int64_t height, width, row_stride, col_stride;

  RANKMIXUP_HD static ImageLayout of(int64_t channels, int64_t height, int64_t width, bool channels_last) {
    return channels_last ? ImageLayout{height, width, width * channels, channels} : ImageLayout{height, width, width, 1};
  }
  RANKMIXUP_HD int64_t row_of(int64_t offset) const { return offset / row_stride % height; }
  RANKMIXUP_HD int64_t col_of(int64_t offset) const { return offset / col_stride % width; }
  RANKMIXUP_HD bool in_box(const Box& box, int64_t offset) const { return box.contains(row_of(offset), col_of(offset)); }
};

}  // namespace rankmixup
