"""deploy/cloudformation/opsagent-sidecar.yaml: cfn-lint clean, and created on the moto server as a stack."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "cloudformation" / "opsagent-sidecar.yaml"
SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:opsagent/prod-AbCdEf"


def test_cfn_lint_finds_nothing() -> None:
    """cfn-lint (the AWS CloudFormation linter) reports no error, warning or informational finding."""
    binary = shutil.which("cfn-lint") or str(Path(sys.executable).with_name("cfn-lint"))
    proc = subprocess.run([binary, "--format", "parseable", "--", str(TEMPLATE)],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def _document(value: Any) -> Any:
    """A policy document as IAM returns it: a dict, JSON text, or (moto 5.2, for stack-created inline policies) a Python repr."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return ast.literal_eval(value)


def _stack(aws: Any, name: str, **params: str) -> dict[str, Any]:
    iam = boto3.client("iam", region_name="us-east-1")
    policy = iam.create_policy(PolicyName=f"{name}-task",
                               PolicyDocument=(ROOT / "deploy" / "iam" / "opsagent-policy.json").read_text())["Policy"]
    cfn = boto3.client("cloudformation", region_name="us-east-1")
    parameters = {"AppImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/api:1.0.0",
                  "AgentImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/opsagent:0.1.0",
                  "SecretArn": SECRET, "TaskPolicyArn": policy["Arn"], "Family": name, **params}
    cfn.create_stack(StackName=name, TemplateBody=TEMPLATE.read_text(), Capabilities=["CAPABILITY_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()])
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    # moto 5.2 lists a resource whose Condition is false as an entry without id or type: not a resource.
    resources = [r for r in cfn.describe_stack_resources(StackName=name)["StackResources"] if "LogicalResourceId" in r]
    return {"stack": stack, "resources": {r["LogicalResourceId"]: r for r in resources},
            "outputs": {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}}


def test_the_stack_creates_the_task_definition_roles_and_log_group(aws: Any) -> None:
    """On the moto server every resource of the template is created and the task definition holds the sidecar as designed."""
    created = _stack(aws, "api-with-opsagent", AlertmanagerUrl="http://alertmanager.internal:9093")
    assert set(created["resources"]) == {"LogGroup", "ExecutionRole", "TaskRole", "TaskDefinition"}
    logs = boto3.client("logs", region_name="us-east-1").describe_log_groups(logGroupNamePrefix="/ecs/api-with-opsagent")
    assert [g["logGroupName"] for g in logs["logGroups"]] == ["/ecs/api-with-opsagent"]
    task = boto3.client("ecs", region_name="us-east-1").describe_task_definition(
        taskDefinition=created["outputs"]["TaskDefinitionArn"])["taskDefinition"]
    [agent] = [c for c in task["containerDefinitions"] if c["name"] == "opsagent"]
    assert agent["readonlyRootFilesystem"] is True and agent["essential"] is False and agent["user"] == "10001:10001"
    assert {m["containerPath"] for m in agent["mountPoints"]} == {"/var/lib/opsagent", "/tmp"}
    assert {s["valueFrom"].rsplit(":", 3)[0] for s in agent["secrets"]} == {SECRET}
    env = {e["name"]: e["value"] for e in agent["environment"]}
    assert env["OPSAGENT_NOTIFY__ALERTMANAGER_URL"] == "http://alertmanager.internal:9093"
    assert agent["logConfiguration"]["options"]["awslogs-group"] == "/ecs/api-with-opsagent"
    iam = boto3.client("iam", region_name="us-east-1")
    execution = created["resources"]["ExecutionRole"]["PhysicalResourceId"]
    inline = _document(iam.get_role_policy(RoleName=execution, PolicyName="read-task-secrets")["PolicyDocument"])
    assert inline["Statement"][0]["Resource"] == SECRET
    assert iam.get_role(RoleName=created["resources"]["TaskRole"]["PhysicalResourceId"])["Role"]["Arn"]
    # moto 5.2 creates the roles but neither attaches ManagedPolicyArns nor keeps the task definition's
    # role ARNs: those links are read from the template (cfn-lint has validated the references).
    from cfnlint.decode import cfn_yaml

    resources = cfn_yaml.loads(TEMPLATE.read_text())["Resources"]
    assert resources["TaskRole"]["Properties"]["ManagedPolicyArns"] == [{"Ref": "TaskPolicyArn"}]
    props = resources["TaskDefinition"]["Properties"]
    assert props["TaskRoleArn"] == {"Fn::GetAtt": ["TaskRole", "Arn"]}
    assert props["ExecutionRoleArn"] == {"Fn::GetAtt": ["ExecutionRole", "Arn"]}


def test_ecs_exec_adds_only_the_ssmmessages_policy(aws: Any) -> None:
    """With EnableEcsExec the stack adds the ssmmessages policy to the task role, and nothing else changes."""
    created = _stack(aws, "api-exec", EnableEcsExec="true")
    assert set(created["resources"]) == {"LogGroup", "ExecutionRole", "TaskRole", "TaskDefinition", "EcsExecPolicy"}
    iam = boto3.client("iam", region_name="us-east-1")
    role = created["resources"]["TaskRole"]["PhysicalResourceId"]
    document = _document(iam.get_role_policy(RoleName=role, PolicyName="ecs-exec")["PolicyDocument"])
    assert all(a.startswith("ssmmessages:") for a in document["Statement"][0]["Action"])
