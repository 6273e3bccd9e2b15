// `mue show PATH`: what a file this program wrote holds, without Python. A run file (status, rule, resolved
// config, final and best losses, the parameter table, the last progress rows), a sweep index (the summary table
// and the best point of each group), a checkpoint (step, tensors) or a coordinate-check file (points,
// quantities). Plain text, or one JSON object with `json`. Reads without the HDF5 file lock, so a live run can
// be shown while it trains.
#pragma once
#include <cstdio>
#include <string>

namespace mue {

// Writes the description of `path` to `out`; `rows` = how many progress (or summary) rows to list, 0 = all.
// Throws mue::Error with one line naming the problem for anything it cannot read.
void show_file(const std::string& path, bool json, int rows, std::FILE* out);

}  // namespace mue
