// fleetdl/partition/modules.hpp — the module set that `fleetdl partition
// nonn` writes (DIR/modules.json, one .fdl per student, the combiner and the
// unified student), loaded and checked for distributed inference: by
// `fleetdl infer` (one process per student) and by `fleetdl fleet infer`
// (one device per student). Host only (files, JSON).
#pragma once

#include "fleetdl/core/error.hpp"
#include "fleetdl/core/json.hpp"
#include "fleetdl/core/parallel.hpp"
#include "fleetdl/io/fdl.hpp"
#include "fleetdl/nn/model.hpp"

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace fleetdl::partition {

/// Most students a module set may have (each is a process or a device).
inline constexpr std::size_t kMaxStudents = 64;

/// The module set `partition nonn` wrote: DIR/modules.json names the files.
struct ModuleSet {
  struct Student {
    std::string file;
    Index features = 0;
    nn::Model<float> model;
  };
  std::vector<Student> students;
  std::string combiner_file, unified_file;
  nn::Model<float> combiner;
  std::optional<nn::Model<float>> unified;
  Index classes = 0;
};

/// Load and check DIR/modules.json and every module it names: files are
/// plain names inside DIR, each student's output size is its feature count,
/// the students share one input shape, the combiner takes all their features
/// and gives `classes` outputs, and the unified student (optional) matches.
/// Errors name the file and what is wrong.
inline Result<ModuleSet> load_modules(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string mpath = (fs::path(dir) / "modules.json").string();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return make_error(Errc::not_found, dir + ": no such module directory");
  auto doc = json::parse_file(mpath);
  if (!doc) return std::move(doc).error();
  const auto bad = [&](const std::string& what) { return make_error(Errc::corrupt, mpath + ": " + what); };
  const json::Value* fmt = doc->find("format");
  if (!fmt || !fmt->is_string() || fmt->as_string() != "fleetdl-nonn-modules")
    return bad("not a fleetdl NoNN module manifest (\"format\" must be \"fleetdl-nonn-modules\")");
  const json::Value* ver = doc->find("version");
  if (!ver || !ver->is_int() || ver->as_int() != 1) return bad("\"version\" must be 1");
  const json::Value* cls = doc->find("classes");
  if (!cls || !cls->is_int() || cls->as_int() < 2 || cls->as_int() > 65536) return bad("\"classes\" must be an integer in [2, 65536]");
  const json::Value* studs = doc->find("students");
  // one process per student, each holding the test set: a device count, not
  // thousands
  if (!studs || !studs->is_array() || studs->items().empty() || studs->items().size() > kMaxStudents)
    return bad("\"students\" must be an array of 1 to " + std::to_string(kMaxStudents) + " modules");
  // a module file name: a plain name inside DIR
  const auto plain = [](const std::string& f) {
    return !f.empty() && f.size() <= 255 && f.find('/') == std::string::npos && f != "." && f != "..";
  };
  ModuleSet set;
  set.classes = static_cast<Index>(cls->as_int());
  Index total = 0;
  for (std::size_t i = 0; i < studs->items().size(); ++i) {
    const auto& s = studs->items()[i];
    const std::string where = "students[" + std::to_string(i) + "]";
    const json::Value* f = s.find("file");
    const json::Value* n = s.find("features");
    if (!f || !f->is_string() || !plain(f->as_string())) return bad(where + ".file must be a file name inside the directory");
    if (!n || !n->is_int() || n->as_int() < 1 || n->as_int() > 1 << 20) return bad(where + ".features must be an integer in [1, 2^20]");
    ModuleSet::Student st;
    st.file = (fs::path(dir) / f->as_string()).string();
    st.features = static_cast<Index>(n->as_int());
    auto m = io::load_model<float>(st.file);
    if (!m) return std::move(m).error();
    st.model = std::move(m->model);
    if (st.model.output_shape().size() != st.features)
      return make_error(Errc::shape_mismatch, st.file + ": outputs " + std::to_string(st.model.output_shape().size()) +
                                                  " values per image, the manifest says " + std::to_string(st.features) +
                                                  " features");
    if (i > 0 && !(st.model.input_shape() == set.students[0].model.input_shape()))
      return make_error(Errc::shape_mismatch, st.file + ": input shape " + st.model.input_shape().str() +
                                                  " differs from student 0's " + set.students[0].model.input_shape().str());
    total += st.features;
    set.students.push_back(std::move(st));
  }
  const json::Value* comb = doc->find("combiner");
  if (!comb || !comb->is_string() || !plain(comb->as_string())) return bad("\"combiner\" must be a file name inside the directory");
  set.combiner_file = (fs::path(dir) / comb->as_string()).string();
  auto c = io::load_model<float>(set.combiner_file);
  if (!c) return std::move(c).error();
  set.combiner = std::move(c->model);
  if (set.combiner.input_shape().size() != total)
    return make_error(Errc::shape_mismatch, set.combiner_file + ": takes " + std::to_string(set.combiner.input_shape().size()) +
                                                " features, the students send " + std::to_string(total));
  if (set.combiner.output_shape().size() != set.classes)
    return make_error(Errc::shape_mismatch, set.combiner_file + ": has " + std::to_string(set.combiner.output_shape().size()) +
                                                " outputs, the manifest says " + std::to_string(set.classes) + " classes");
  if (const json::Value* u = doc->find("unified")) {
    if (!u->is_string() || !plain(u->as_string())) return bad("\"unified\" must be a file name inside the directory");
    set.unified_file = (fs::path(dir) / u->as_string()).string();
    auto um = io::load_model<float>(set.unified_file);
    if (!um) return std::move(um).error();
    if (!(um->model.input_shape() == set.students[0].model.input_shape()) || um->model.output_shape().size() != set.classes)
      return make_error(Errc::shape_mismatch, set.unified_file + ": its input or output shape does not match the modules");
    set.unified = std::move(um->model);
  }
  return set;
}

/// Forward a whole image set through `m` in batches of `batch` columns (one
/// column per image); how `fleetdl infer` and `fleet infer` run a module here.
inline Matrix<float> forward_all(nn::Model<float>& m, const Matrix<float>& x, Index batch, ThreadPool* pool) {
  nn::ExecContext<float> ctx;
  ctx.pool = pool;
  Matrix<float> out(m.output_shape().size(), x.cols());
  for (Index b = 0; b < x.cols(); b += batch) {
    const Index n = std::min(batch, x.cols() - b);
    const Matrix<float> xb = x.middleCols(b, n);
    out.middleCols(b, n) = m.forward(xb, ctx);
  }
  return out;
}

}  // namespace fleetdl::partition
