-- Argo CD health check for sluice.dev/StreamJob. Argo CD runs it with the live object as `obj`.
-- A status older than the spec (observedGeneration below metadata.generation) says nothing about
-- the current spec, so it is Progressing whatever its conditions say; a current one is Healthy as
-- soon as Ready is True: nothing waits for a condition the operator never sets.
local hs = {}

local function condition(status, wanted)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the StreamJob"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation ..
    " (status describes " .. status.observedGeneration .. ")"
  return hs
end

-- A condition set for an older generation is as stale as an old observedGeneration.
local function current(c)
  return c ~= nil and (generation == nil or c.observedGeneration == nil or c.observedGeneration >= generation)
end

for _, wanted in ipairs({ "SpecValid", "Degraded", "Progressing", "Ready" }) do
  local c = condition(status, wanted)
  if c ~= nil and not current(c) then
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to update the " .. wanted .. " condition to generation " .. generation
    return hs
  end
end
local specValid = condition(status, "SpecValid")
local degraded = condition(status, "Degraded")
local progressing = condition(status, "Progressing")
local ready = condition(status, "Ready")

if specValid ~= nil and specValid.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(specValid, "The spec is invalid")
  return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end
if status.phase == "Failed" or status.phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Phase " .. status.phase)
  return hs
end
if obj.spec ~= nil and obj.spec.suspend == true and status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended: stopped at its final checkpoint, state kept"
  return hs
end
if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(progressing, "Progressing")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end
hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the workers to be ready")
return hs
