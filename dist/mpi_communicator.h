// The MPI communicator (dist/mpi_communicator.cpp, built where CMake finds MPI: MUE_HAVE_MPI).
#pragma once
#include <memory>

#include "dist/communicator.h"

namespace mue::dist {

#ifdef MUE_HAVE_MPI
// MPI_Init, then checks that MPI's world is the launcher's; MPI_Finalize when the process exits.
std::unique_ptr<Communicator> start_mpi(const Launch& launch);
#endif

}  // namespace mue::dist
