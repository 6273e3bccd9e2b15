// Provenance of this build, written into every run file.
#pragma once

namespace mue {
// The source tree's short git commit when the program was built ("-dirty" with uncommitted changes to tracked
// files, "unknown" outside a checkout); cmake/git_commit.cmake regenerates it on every build.
const char* git_commit();
}  // namespace mue
