// Autograd of grutrain_native::gru_layer, behind the Autograd dispatch key.
//
// Device independent: the forward and backward call the gru_layer / gru_layer_backward operators
// through the dispatcher, so a CUDA kernel registered beside the CPU one gets this autograd as it
// is. Written in C++ rather than with torch.library.register_autograd because the Python wrapper
// cost ~0.3 ms per training step (forward and backward together), 15% of the whole step at
// hidden size 32 (`grutrain bench`'s 32,256,1,32).
//
// A double backward (create_graph=True, e.g. a gradient penalty) needs a gradient that is itself
// differentiable, which the kernel's backward is not: the layer is then recomputed with the GRU
// equations in ATen operations and those are differentiated, as the Python fused path does.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace grutrain_native {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using LayerSignature = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                          const Tensor&, const std::optional<Tensor>&,
                                                          const std::optional<Tensor>&, c10::string_view,
                                                          std::optional<at::ScalarType>);
using BackwardSignature = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const std::optional<Tensor>&, const std::optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, c10::string_view, std::optional<at::ScalarType>,
    std::array<bool, 6>);

const c10::TypedOperatorHandle<LayerSignature>& layer_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("grutrain_native::gru_layer", "").typed<LayerSignature>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSignature>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("grutrain_native::gru_layer_backward", "")
                             .typed<BackwardSignature>();
  return op;
}

std::optional<Tensor> present(const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; }

// The GRU equations step by step (the definition), for double backward only.
std::tuple<Tensor, Tensor> reference_layer(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                           const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh,
                                           bool after) {
  const int64_t H = w_hh.size(1);
  const Tensor gi = at::linear(x, w_ih, present(b_ih));
  const Tensor w_hrz = w_hh.narrow(0, 0, 2 * H), w_hn = w_hh.narrow(0, 2 * H, H);
  const std::optional<Tensor> b_hrz = b_hh.defined() ? present(b_hh.narrow(0, 0, 2 * H)) : std::nullopt;
  const std::optional<Tensor> b_hn = b_hh.defined() ? present(b_hh.narrow(0, 2 * H, H)) : std::nullopt;
  Tensor h = h0;
  std::vector<Tensor> outs;
  outs.reserve(x.size(0));
  for (int64_t t = 0; t < x.size(0); ++t) {
    const auto xs = gi.select(0, t).chunk(3, 1);
    const auto hs = at::linear(h, w_hrz, b_hrz).chunk(2, 1);
    const Tensor r = at::sigmoid(xs[0] + hs[0]), z = at::sigmoid(xs[1] + hs[1]);
    const Tensor n = after ? at::tanh(xs[2] + r * at::linear(h, w_hn, b_hn))
                           : at::tanh(xs[2] + at::linear(r * h, w_hn, b_hn));
    h = n + z * (h - n);
    outs.push_back(h);
  }
  return {at::stack(outs), h};
}

struct GruLayerFunction : public torch::autograd::Function<GruLayerFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                               const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                               const std::optional<Tensor>& b_hh, c10::string_view reset,
                               std::optional<at::ScalarType> matmul_dtype) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, h_n, workspace] = layer_op().call(x, h0, w_ih, w_hh, b_ih, b_hh, reset, matmul_dtype);
    ctx->saved_data["after"] = reset == "after";
    ctx->saved_data["matmul_dtype"] = matmul_dtype ? static_cast<int64_t>(*matmul_dtype) : int64_t{-1};
    ctx->mark_non_differentiable({workspace});
    ctx->set_materialize_grads(false);
    // x and the weights are inputs (no copies); out is the output the caller got: changing it in
    // place before backward makes backward raise (version counter), as on the fused path.
    ctx->save_for_backward({x, h0, w_ih, w_hh, b_ih.value_or(Tensor()), b_hh.value_or(Tensor()), out, workspace});
    return {out, h_n, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &h0 = saved[1], &w_ih = saved[2], &w_hh = saved[3], &b_ih = saved[4],
                 &b_hh = saved[5], &out = saved[6], &workspace = saved[7];
    const bool after = ctx->saved_data["after"].toBool();
    const Tensor &grad_out = grads[0], &grad_h_n = grads[1];
    variable_list result(8);  // one per argument of forward; the last two (reset, matmul_dtype) none
    if (!grad_out.defined() && !grad_h_n.defined()) return result;

    // needs_input_grad counts the tensor arguments present (an absent bias has no edge).
    std::array<bool, 6> needs{};
    const std::array<const Tensor*, 6> inputs{&x, &h0, &w_ih, &w_hh, &b_ih, &b_hh};
    for (size_t i = 0, edge = 0; i < 6; ++i) {
      if (inputs[i]->defined()) needs[i] = ctx->needs_input_grad(edge++);
    }

    if (at::GradMode::is_enabled()) {  // create_graph=True: the gradient must be differentiable
      c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
      auto [ref_out, ref_h_n] = reference_layer(x, h0, w_ih, w_hh, b_ih, b_hh, after);
      variable_list outputs, grad_outputs, wanted;
      if (grad_out.defined()) outputs.push_back(ref_out), grad_outputs.push_back(grad_out);
      if (grad_h_n.defined()) outputs.push_back(ref_h_n), grad_outputs.push_back(grad_h_n);
      std::vector<size_t> which;
      for (size_t i = 0; i < 6; ++i) {
        if (needs[i]) wanted.push_back(*inputs[i]), which.push_back(i);
      }
      if (wanted.empty()) return result;
      const variable_list got = torch::autograd::grad(outputs, wanted, grad_outputs, /*retain_graph=*/true,
                                                      /*create_graph=*/true, /*allow_unused=*/true);
      for (size_t k = 0; k < which.size(); ++k) result[which[k]] = got[k];
      return result;
    }

    const int64_t dtype = ctx->saved_data["matmul_dtype"].toInt();
    const std::optional<at::ScalarType> matmul_dtype =
        dtype < 0 ? std::nullopt : std::optional<at::ScalarType>(static_cast<at::ScalarType>(dtype));
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [dx, dh0, dw_ih, dw_hh, db_ih, db_hh] =
        backward_op().call(present(grad_out), present(grad_h_n), x, h0, w_ih, w_hh, out, workspace,
                           after ? "after" : "before", matmul_dtype, needs);
    result[0] = dx, result[1] = dh0, result[2] = dw_ih, result[3] = dw_hh, result[4] = db_ih, result[5] = db_hh;
    return result;
  }
};

std::tuple<Tensor, Tensor, Tensor> gru_layer_autograd(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                                                      const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                      const std::optional<Tensor>& b_hh, c10::string_view reset,
                                                      std::optional<at::ScalarType> matmul_dtype) {
  const variable_list r = GruLayerFunction::apply(x, h0, w_ih, w_hh, b_ih, b_hh, reset, matmul_dtype);
  return {r[0], r[1], r[2]};
}

}  // namespace
}  // namespace grutrain_native

TORCH_LIBRARY_IMPL(grutrain_native, Autograd, m) {
  m.impl("gru_layer", &grutrain_native::gru_layer_autograd);
}
