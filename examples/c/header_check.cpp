// The header as C++ sees it: it must compile with g++ -Wall -Wextra -Werror -pedantic
// and its functions must link with C linkage (extern "C").
#include <cstdio>

#include "qgemm.h"

int main() {
    qgemm_isa isa = QGEMM_ISA_PORTABLE;
    if (qgemm_selected_isa(&isa) != QGEMM_OK || !qgemm_isa_available(isa)) return 1;
    // A null handle is an error with a message, never a crash.
    qgemm_status status = qgemm_gemm(nullptr, nullptr, nullptr, nullptr);
    char message[128];
    qgemm_last_error_message(message, sizeof message);
    std::printf("C++: qgemm %s, ISA %u; a null call: status %u (%s)\n", qgemm_version(), static_cast<unsigned>(isa),
                static_cast<unsigned>(status), message);
    return status == QGEMM_STATUS_NULL_POINTER ? 0 : 1;
}
